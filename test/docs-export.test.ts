import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import SwaggerParser from '@apidevtools/swagger-parser'
import { buildApp } from '../src/app.js'
import { EXPORT_FILE, openApiDocument, serializeDocument } from '../src/export-openapi.js'
import { testConfig } from './helper.js'

type Json = Record<string, any>
const here = dirname(fileURLToPath(import.meta.url))
const STALE = 'openapi/openapi.json is out of date with routes/ and openapi/upstreams/: run `npm run openapi` and commit the result'

test('the committed openapi/openapi.json is the document of the shipped routes (regenerated and compared)', async () => {
  const committed = await readFile(EXPORT_FILE, 'utf8').catch(() => null)
  assert.ok(committed !== null, `${EXPORT_FILE} is missing: run \`npm run openapi\``)
  const fresh = serializeDocument(await openApiDocument())
  if (committed !== fresh) {
    assert.deepEqual(JSON.parse(committed), JSON.parse(fresh), STALE)
    assert.equal(committed, fresh, STALE + ' (the content is the same; only the formatting differs)')
  }
})

test('the exported document is valid OpenAPI 3.1 and documents every shipped route', async () => {
  const doc = await openApiDocument() as Json
  await SwaggerParser.validate(structuredClone(doc) as never)
  const ids = new Set<string>()
  let operations = 0
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    for (const [method, op] of Object.entries(item as Json)) {
      operations++
      assert.ok(typeof op.operationId === 'string' && !ids.has(op.operationId), `${method} ${path}: operationId ${op.operationId}`)
      ids.add(op.operationId)
      assert.ok(Array.isArray(op.tags) && op.tags.length > 0, `${method} ${path} has a tag`)
      for (const m of path.matchAll(/\{([^}]+)\}/g)) assert.ok((op.parameters ?? []).some((p: Json) => p.in === 'path' && p.name === m[1]), `${method} ${path}: {${m[1]}} declared`)
      for (const s of ['502', '503', '504']) assert.ok(op.responses[s] !== undefined, `${method} ${path} documents ${s}`)
    }
  }
  const app = await buildApp(testConfig({ JWT_SECRET: 'docs-test-secret-docs-test-secret-0123' }))
  try {
    const declared = app.gw.declarations.routes.reduce((n, r) => n + r.methods.length, 0)
    assert.ok(operations >= declared, `${operations} operations for ${declared} declared route methods`)
    assert.ok(declared > 0)
  } finally { await app.close() }
})

test('the gateway serves the same document as the export (default settings, the shipped routes)', async () => {
  const app = await buildApp(testConfig({ JWT_SECRET: 'docs-test-secret-docs-test-secret-0123' }))
  try {
    await app.ready()
    const served = (await app.inject({ url: '/openapi.json' })).json()
    assert.deepEqual(served, await openApiDocument())
  } finally { await app.close() }
})

test('`node dist/src/export-openapi.js --out <file>` (what `npm run openapi` runs) writes the document', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'gw-export-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const out = join(dir, 'openapi.json')
  const { stdout } = await promisify(execFile)(process.execPath, [join(here, '..', 'src', 'export-openapi.js'), '--out', out], { cwd: dir, timeout: 30_000 })
  assert.match(stdout, /^wrote openapi\.json: \d+ operations\n$/)
  assert.equal(await readFile(out, 'utf8'), serializeDocument(await openApiDocument()))
  assert.ok(relative(join(here, '..', '..'), EXPORT_FILE) === join('openapi', 'openapi.json'), `the export goes to openapi/openapi.json at the project root, not ${EXPORT_FILE}`)
})
