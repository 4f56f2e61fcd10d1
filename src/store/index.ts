import type { GatewayConfig } from '../config.js'
import { MemoryStore } from './memory.js'
import { RedisStore } from './redis.js'
import type { Store } from './types.js'

export type { Store, StoreState, StoreHealth, RateLimitCheck, RateLimitResult } from './types.js'
export { MemoryStore } from './memory.js'
export { RedisStore } from './redis.js'

/** REDIS_URL set: the shared RedisStore; unset: the in-process MemoryStore (one replica). */
export function createStore (config: Pick<GatewayConfig, 'redisUrl' | 'redisPrefix' | 'redisCommandTimeoutMs'>): Store {
  return config.redisUrl === null
    ? new MemoryStore()
    : new RedisStore({ url: config.redisUrl, prefix: config.redisPrefix, commandTimeoutMs: config.redisCommandTimeoutMs })
}
