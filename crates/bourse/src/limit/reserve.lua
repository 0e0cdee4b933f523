-- One admission decision over every scope of a group, atomically (see redis.rs for the keys).
-- KEYS[1] the group's holds ZSET (member hold id, score expiry), KEYS[2] this hold's HASH,
-- then 8 per scope: day, month, total, reserved, rpm ZSET, tpm ZSET, tpm tokens HASH, leases ZSET.
-- ARGV: now, hold id, cost, tokens, request (0/1), hold ttl, day ttl, month ttl, scope count,
-- then 6 per scope: budget day, month, total, rpm, tpm, concurrency (-1: none).
-- Returns {0, scope, what, value} for a refusal (what 1-3 budget day/month/total with value
-- the used amount, 4-6 rpm/tpm/concurrency with value the retry delay), or {1, then 7 per
-- scope: day, month, total, requests, newest request ts, tokens, newest tokens ts (-1: none)}.
-- Integers only: every value stays below 2^53, where Lua's doubles are exact.
local now = tonumber(ARGV[1])
local hold = ARGV[2]
local cost = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local request = ARGV[5] == '1'
local ttl = tonumber(ARGV[6])
local n = tonumber(ARGV[9])
local cutoff = now - 60000
local hold_prefix = string.sub(KEYS[2], 1, #KEYS[2] - #hold)

local function num(key)
  return tonumber(redis.call('GET', key) or '0')
end

local function add_clamped(key, delta)
  if redis.call('INCRBY', key, delta) < 0 then
    redis.call('SET', key, '0', 'KEEPTTL')
  end
end

-- Release the reservations of the group's expired holds.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do
  local hkey = hold_prefix .. id
  local fields = redis.call('HGETALL', hkey)
  local c = 0
  for j = 1, #fields, 2 do
    if fields[j] == 'c' then c = tonumber(fields[j + 1]) end
  end
  for j = 1, #fields, 2 do
    if c ~= 0 and fields[j] ~= 'c' and redis.call('EXISTS', fields[j + 1]) == 1 then
      add_clamped(fields[j + 1], -c)
    end
  end
  redis.call('DEL', hkey)
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
end

-- The tokens HASH holds each reservation's tokens under its hold id and their running total
-- under 'sum' (hold ids are digits), so a decision reads one field rather than the minute.
local function tokens_used(tpm_hash)
  return tonumber(redis.call('HGET', tpm_hash, 'sum') or '0')
end

-- Check every scope; nothing is counted unless all admit.
for i = 1, n do
  local k = 2 + (i - 1) * 8
  local a = 9 + (i - 1) * 6
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', cutoff)
  -- In chunks: Lua's unpack takes a few thousand values at most.
  while true do
    local gone = redis.call('ZRANGEBYSCORE', KEYS[k + 6], '-inf', cutoff, 'LIMIT', 0, 1000)
    if #gone == 0 then break end
    local left = 0
    for _, v in ipairs(redis.call('HMGET', KEYS[k + 7], unpack(gone))) do
      left = left + (tonumber(v) or 0)
    end
    redis.call('HDEL', KEYS[k + 7], unpack(gone))
    redis.call('HINCRBY', KEYS[k + 7], 'sum', -left)
    redis.call('ZREM', KEYS[k + 6], unpack(gone))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 8], '-inf', now)
  for w = 1, 3 do
    local limit = tonumber(ARGV[a + w])
    if limit >= 0 then
      local used = num(KEYS[k + w])
      if (cost == 0 and used >= limit) or cost > limit - used then
        return {0, i, w, used}
      end
    end
  end
  local rpm = tonumber(ARGV[a + 4])
  if request and rpm >= 0 then
    local count = redis.call('ZCARD', KEYS[k + 5])
    if count >= rpm then
      local idx = count - rpm
      local e = redis.call('ZRANGE', KEYS[k + 5], idx, idx, 'WITHSCORES')
      local retry = 60000
      if #e > 0 then retry = tonumber(e[2]) + 60000 - now end
      return {0, i, 4, retry}
    end
  end
  local tpm = tonumber(ARGV[a + 5])
  if tpm >= 0 then
    if tokens > tpm then
      return {0, i, 5, 60000}
    end
    local used = tokens_used(KEYS[k + 7])
    if used + tokens > tpm then
      local retry = 60000
      local e = redis.call('ZRANGE', KEYS[k + 6], 0, -1, 'WITHSCORES')
      for j = 1, #e, 2 do
        used = used - tonumber(redis.call('HGET', KEYS[k + 7], e[j]) or '0')
        if used + tokens <= tpm then
          retry = tonumber(e[j + 1]) + 60000 - now
          break
        end
      end
      return {0, i, 5, retry}
    end
  end
  local conc = tonumber(ARGV[a + 6])
  if request and conc >= 0 and redis.call('ZCARD', KEYS[k + 8]) >= conc then
    return {0, i, 6, 1000}
  end
end

-- Count.
local out = {1}
local record = {'c', ARGV[3]}
for i = 1, n do
  local k = 2 + (i - 1) * 8
  local a = 9 + (i - 1) * 6
  local day = redis.call('INCRBY', KEYS[k + 1], ARGV[3])
  redis.call('PEXPIRE', KEYS[k + 1], ARGV[7])
  local month = redis.call('INCRBY', KEYS[k + 2], ARGV[3])
  redis.call('PEXPIRE', KEYS[k + 2], ARGV[8])
  local total = redis.call('INCRBY', KEYS[k + 3], ARGV[3])
  redis.call('INCRBY', KEYS[k + 4], ARGV[3])
  for w = 1, 4 do
    table.insert(record, tostring(#record / 2))
    table.insert(record, KEYS[k + w])
  end
  if request then
    if tonumber(ARGV[a + 4]) >= 0 then
      redis.call('ZADD', KEYS[k + 5], now, hold)
      redis.call('PEXPIRE', KEYS[k + 5], 120000)
    end
    redis.call('ZADD', KEYS[k + 8], now + ttl, hold)
    redis.call('PEXPIRE', KEYS[k + 8], ttl + 60000)
  end
  if tonumber(ARGV[a + 5]) >= 0 then
    redis.call('ZADD', KEYS[k + 6], now, hold)
    redis.call('HSET', KEYS[k + 7], hold, ARGV[4])
    redis.call('HINCRBY', KEYS[k + 7], 'sum', ARGV[4])
    redis.call('PEXPIRE', KEYS[k + 6], 120000)
    redis.call('PEXPIRE', KEYS[k + 7], 120000)
  end
  local requests = redis.call('ZCARD', KEYS[k + 5])
  local newest_request = -1
  local e = redis.call('ZRANGE', KEYS[k + 5], -1, -1, 'WITHSCORES')
  if #e > 0 then newest_request = tonumber(e[2]) end
  local newest_tokens = -1
  e = redis.call('ZRANGE', KEYS[k + 6], -1, -1, 'WITHSCORES')
  if #e > 0 then newest_tokens = tonumber(e[2]) end
  for _, v in ipairs({day, month, total, requests, newest_request, tokens_used(KEYS[k + 7]), newest_tokens}) do
    table.insert(out, v)
  end
end
redis.call('HSET', KEYS[2], unpack(record))
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[1], now + ttl, hold)
return out
