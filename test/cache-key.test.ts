/**
 * The cache's key memo: a remembered key is the key a fresh computation gives, the memo stays bounded, and long
 * key material is not kept. (The cache's behaviour with these keys is covered by the cache-*.test.ts suites.)
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { digest, KeyMemo, MEMO_MAX_ENTRIES, MEMO_MAX_MATERIAL, splitUrl, urlKeyPrefix } from '../src/cache-key.js'

function material (path: string, query: string, extra = ''): string {
  return 'GET\n' + path + '\n' + query + '\n' + extra
}

test('a remembered base key is the one a fresh computation gives, for each distinct material', () => {
  const memo = new KeyMemo()
  const urls = ['/a', '/a?x=1&y=2', '/a?y=2&x=1', '/b/%7euser', '/b/~user', '/c?q=' + 'z'.repeat(40)]
  for (let round = 0; round < 2; round++) {
    for (const url of urls) {
      const { path, query } = splitUrl(url)
      for (const extra of ['', 'c:client-1', 'c:client-2']) {
        const m = material(path, query, extra)
        assert.equal(memo.baseKey(m, path, query), urlKeyPrefix(path, query) + digest(m), `${url} ${extra}`)
      }
    }
  }
  // the same material gives the same key; another client's material another one
  const { path, query } = splitUrl('/a?x=1')
  assert.notEqual(memo.baseKey(material(path, query, 'c:1'), path, query), memo.baseKey(material(path, query, 'c:2'), path, query))
})

test('the memo stays bounded however many distinct URLs come', () => {
  const memo = new KeyMemo()
  for (let i = 0; i < MEMO_MAX_ENTRIES * 2 + 10; i++) {
    const path = `/item/${i}`
    const m = material(path, '')
    assert.equal(memo.baseKey(m, path, ''), urlKeyPrefix(path, '') + digest(m))
    assert.ok(memo.size <= MEMO_MAX_ENTRIES, `size ${memo.size} after ${i + 1} URLs`)
  }
  assert.ok(memo.size > 0)
})

test('long key material is not remembered, and still gets the right key', () => {
  const memo = new KeyMemo()
  const path = '/long/' + 'p'.repeat(MEMO_MAX_MATERIAL)
  const m = material(path, '')
  assert.equal(memo.baseKey(m, path, ''), urlKeyPrefix(path, '') + digest(m))
  assert.equal(memo.size, 0)
  const short = material('/s', '')
  memo.baseKey(short, '/s', '')
  assert.equal(memo.size, 1)
})
