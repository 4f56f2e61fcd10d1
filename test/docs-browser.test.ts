/**
 * The docs as a user sees them: /docs in headless Chromium (Debian's `chromium`, driven by playwright-core), the
 * operations listed, and "Try it out" sent through the gateway to a real upstream, first on a public route, then
 * on an API-key route after filling in the key in the "Authorize" dialog.
 */
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { chromium, type Browser, type Page } from 'playwright-core'
import type { FastifyInstance } from 'fastify'
import { defineRoutes, defineUpstream } from '../src/declare.js'
import { build } from './helper.js'
import { startUpstream, type Upstream } from './helpers/upstream.js'

const CHROMIUM = '/usr/bin/chromium'
const ADMIN_TOKEN = 'docs-browser-admin-token'
const WAIT = 20_000
let browser: Browser | null = null

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)`)
  // root in a container cannot use Chromium's sandbox
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] })
})
after(async () => { await browser?.close() })

interface Gateway { app: FastifyInstance, url: string, upstream: Upstream }

async function gateway (t: Parameters<typeof build>[0]): Promise<Gateway> {
  const upstream = await startUpstream(t)
  const app = await build(t, {
    env: { ADMIN_TOKEN, JWT_SECRET: 'docs-test-secret-docs-test-secret-0123' },
    declare: [
      defineUpstream({ name: 'catalog', description: 'The product catalog', targets: [upstream.url] }),
      defineRoutes({
        upstream: 'catalog',
        prefix: '/catalog',
        rewrite: '/v1',
        auth: 'none',
        routes: [
          { method: 'GET', url: '/items', summary: 'List items' },
          { method: 'GET', url: '/items/:id', summary: 'One item' },
          { method: 'GET', url: '/stock', summary: 'Stock levels (API key)', auth: { apiKey: true, scopes: ['stock:read'] } },
        ],
      }),
    ],
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, upstream }
}

/** A page that records what would break the docs for a user: failed or off-site requests, CSP violations. */
async function open (t: { after: (fn: () => Promise<void>) => void }, url: string): Promise<{ page: Page, problems: string[] }> {
  assert.ok(browser !== null)
  const context = await browser.newContext()
  t.after(() => context.close())
  const page = await context.newPage()
  const problems: string[] = []
  const origin = new URL(url).origin
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) problems.push(`off-site request ${r.url()}`) })
  page.on('requestfailed', (r) => problems.push(`failed ${r.url()}: ${r.failure()?.errorText ?? ''}`))
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 401/.test(m.text())) problems.push(`console: ${m.text()}`) })
  await page.goto(url + '/docs', { timeout: WAIT })
  await page.waitForSelector('.opblock', { timeout: WAIT })
  return { page, problems }
}

/** Opens an operation, presses "Try it out", fills its parameters, executes; returns the status and body shown. */
async function tryItOut (page: Page, operationId: string, params: Record<string, string> = {}): Promise<{ status: string, body: string }> {
  const op = page.locator(`[id="operations-catalog-${operationId}"]`)
  if (await op.locator('.try-out__btn').count() === 0) await op.locator('.opblock-summary-control').click()
  const tryOut = op.locator('.try-out__btn')
  if ((await tryOut.textContent())?.trim() === 'Try it out') await tryOut.click()
  for (const [name, value] of Object.entries(params)) await op.locator(`tr[data-param-name="${name}"] input`).fill(value)
  // each execution replaces the live response: clear it first so the wait below sees this one
  if (await op.locator('.btn-clear').count() > 0) await op.locator('.btn-clear').click()
  await op.locator('button.execute').click()
  const status = op.locator('.live-responses-table tbody tr.response .response-col_status')
  await status.waitFor({ timeout: WAIT })
  const body = await op.locator('.live-responses-table tbody tr.response .response-col_description pre.microlight').first().textContent({ timeout: WAIT })
  // the cell reads "200" or "200 Undocumented"
  return { status: (await status.textContent() ?? '').trim().split(/\s/)[0] ?? '', body: body ?? '' }
}

test('/docs lists the operations, grouped by service, and "Try it out" goes through the gateway', { timeout: 90_000 }, async (t) => {
  const gw = await gateway(t)
  const { page, problems } = await open(t, gw.url)

  assert.equal(await page.locator('.opblock').count(), 3)
  const paths = await page.locator('.opblock-summary-path').evaluateAll((els) => els.map((e) => e.getAttribute('data-path')))
  assert.deepEqual(paths, ['/catalog/items', '/catalog/items/{id}', '/catalog/stock'])
  assert.match(await page.locator('.opblock-tag-section h3').first().textContent() ?? '', /catalog\s*The product catalog/)
  assert.equal((await page.locator('[id="operations-catalog-getCatalogItemsById"] .opblock-summary-description').textContent())?.trim(), 'One item')
  // the API-key operation shows its padlock; the public ones do not
  assert.equal(await page.locator('[id="operations-catalog-getCatalogStock"] .authorization__btn').count(), 1)
  assert.equal(await page.locator('[id="operations-catalog-getCatalogItems"] .authorization__btn').count(), 0)

  const res = await tryItOut(page, 'getCatalogItemsById', { id: 'kb-1' })
  assert.equal(res.status, '200')
  assert.equal(gw.upstream.hits, 1)
  assert.equal(gw.upstream.received[0]?.url, '/v1/items/kb-1', 'the browser\'s request reached the upstream through the rewrite')
  assert.match(res.body, /"url": "\/v1\/items\/kb-1"/)
  assert.deepEqual(problems, [])
})

test('"Authorize" with an API key, then "Try it out" on an API-key route', { timeout: 90_000 }, async (t) => {
  const gw = await gateway(t)
  const made = await gw.app.inject({
    method: 'POST',
    url: '/admin/keys',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    payload: { client: 'acme', name: 'docs', scopes: ['stock:read'] },
  })
  assert.equal(made.statusCode, 201, made.body)
  const key = made.json().key as string
  const { page, problems } = await open(t, gw.url)

  // without the key: the gateway's 401, as the document says
  const refused = await tryItOut(page, 'getCatalogStock')
  assert.equal(refused.status, '401')
  assert.match(refused.body, /GW_ERR_AUTH_REQUIRED/)
  assert.equal(gw.upstream.hits, 0)

  // what a user does: "Authorize", paste the key into the API-key scheme, "Authorize", "Close"
  await page.locator('.auth-wrapper button.authorize').click()
  const dialog = page.locator('.modal-ux')
  await dialog.waitFor({ timeout: WAIT })
  const scheme = dialog.locator('.auth-container', { hasText: 'X-API-Key' })
  await scheme.locator('input').fill(key)
  await scheme.locator('button.authorize').click()
  await scheme.locator('button', { hasText: 'Logout' }).waitFor({ timeout: WAIT })
  await dialog.locator('button.btn-done').click()

  const ok = await tryItOut(page, 'getCatalogStock')
  assert.equal(ok.status, '200', ok.body)
  assert.equal(gw.upstream.hits, 1)
  const seen = gw.upstream.received[0]
  assert.equal(seen?.url, '/v1/stock')
  assert.equal(seen?.headers['x-client-id'], 'acme', 'the upstream learns the client from the gateway')
  assert.equal(seen?.headers['x-api-key'], undefined, 'the key itself never reaches the upstream')
  assert.deepEqual(problems, [])
})
