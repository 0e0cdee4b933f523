-- Settle one hold at what was spent, and optionally release a lease (see redis.rs).
-- KEYS[1] the group's holds ZSET, KEYS[2] the hold's HASH, then 7 per scope: the day and
-- month counters of the hold's own day and month, total, reserved, tpm ZSET, tpm tokens
-- HASH, leases ZSET.
-- ARGV: hold id, spent cost, spent tokens, lease id ('' for none), day ttl, month ttl,
-- scope count.
-- A hold still outstanding gives back its reservation; one already swept after its TTL
-- gave it back then, so only the spend is added.
local hold = ARGV[1]
local n = tonumber(ARGV[7])
local held = 0
if redis.call('ZREM', KEYS[1], hold) == 1 then
  held = tonumber(redis.call('HGET', KEYS[2], 'c') or '0')
  redis.call('DEL', KEYS[2])
end
local delta = tonumber(ARGV[2]) - held

local function add_clamped(key, d)
  if redis.call('INCRBY', key, d) < 0 then
    redis.call('SET', key, '0', 'KEEPTTL')
  end
end

for i = 1, n do
  local k = 2 + (i - 1) * 7
  add_clamped(KEYS[k + 1], delta)
  redis.call('PEXPIRE', KEYS[k + 1], ARGV[5])
  add_clamped(KEYS[k + 2], delta)
  redis.call('PEXPIRE', KEYS[k + 2], ARGV[6])
  add_clamped(KEYS[k + 3], delta)
  if held ~= 0 then
    add_clamped(KEYS[k + 4], -held)
  end
  if redis.call('ZSCORE', KEYS[k + 5], hold) then
    local old = tonumber(redis.call('HGET', KEYS[k + 6], hold) or '0')
    redis.call('HSET', KEYS[k + 6], hold, ARGV[3])
    redis.call('HINCRBY', KEYS[k + 6], 'sum', tonumber(ARGV[3]) - old)
  end
  if ARGV[4] ~= '' then
    redis.call('ZREM', KEYS[k + 7], ARGV[4])
  end
end
return 1
