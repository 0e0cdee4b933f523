-- One admission decision over every scope of a group, atomically (see redis.rs for the keys).
-- KEYS[1] the group's holds ZSET (member the hold's record, score its expiry), then one per
-- scope: the scope's HASH (its rpm, tpm and lease ZSETs are that key with 'rpm', 'tpm',
-- 'lease' appended: same hash tag, same slot).
-- ARGV: now, hold id, cost, tokens, request (0/1), the hold's expiry, day, month, the hold's
-- record, its tokens member ('<id>:<tokens>'), now - 60 s, then 6 per scope: budget day,
-- month, total, rpm, tpm, concurrency (-1: none).
-- Returns {0, scope, what, value} for a refusal (what 1-3 budget day/month/total with value
-- the used amount, 4-6 rpm/tpm/concurrency with value the retry delay), or {1, then 7 per
-- scope: day, month, total, requests, newest request ts, tokens, newest tokens ts (-1: none)}.
-- Integers only: every value stays below 2^53, where Lua's doubles are exact.
local now = tonumber(ARGV[1])
local hold = ARGV[2]
local cost = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local request = ARGV[5] == '1'
local expiry = ARGV[6]
local day = tonumber(ARGV[7])
local month = tonumber(ARGV[8])
local n = #KEYS - 1
local cutoff = tonumber(ARGV[11])
local cutoff_s = ARGV[11]
local dayf = 'd' .. ARGV[7]
local monthf = 'm' .. ARGV[8]
-- The group's key prefix ('bourse:{group}:'), which hold records name scopes under.
local prefix = string.sub(KEYS[1], 1, #KEYS[1] - 5)
-- A ZSET's TTL is renewed at most once a minute (the time is kept in the scope's HASH as
-- '<x>x'), to 3 minutes: it always outlives its newest entry by more than 2 minutes.
local ZSET_TTL = 180000

-- Integers go to Redis as strings formatted as integers (a number would be formatted as a
-- double).
local function int(x)
  return string.format('%d', x)
end

-- Release the reservations of the group's expired holds (rare: their replica died).
-- A record is 'id cost day month' then ' <length>:<scope key suffix>' per scope.
while true do
  local records = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
  if #records == 0 then break end
  for _, rec in ipairs(records) do
    local c, d, m, p = string.match(rec, '^%d+ (%d+) (%-?%d+) (%-?%d+)()')
    c = tonumber(c)
    while c ~= 0 and p <= #rec do
      local len, q = string.match(rec, '^ (%d+):()', p)
      local key = prefix .. string.sub(rec, q, q + len - 1)
      p = q + len
      local df, mf = 'd' .. d, 'm' .. m
      local v = redis.call('HMGET', key, df, mf, 't', 'r')
      local set = {}
      local names = {df, mf, 't', 'r'}
      for j = 1, 4 do
        if v[j] then
          local x = tonumber(v[j]) - c
          if x < 0 then x = 0 end
          table.insert(set, names[j])
          table.insert(set, int(x))
        end
      end
      if #set > 0 then redis.call('HSET', key, unpack(set)) end
    end
  end
  redis.call('ZREM', KEYS[1], unpack(records))
  if #records < 500 then break end
end

-- Take what left a tokens window off its running sum: the members are '<hold id>:<tokens>'.
local function expire_tokens(tkey)
  local gone_total = 0
  while true do
    local gone = redis.call('ZRANGEBYSCORE', tkey, '-inf', cutoff_s, 'LIMIT', 0, 1000)
    if #gone == 0 then break end
    for _, m in ipairs(gone) do
      gone_total = gone_total + tonumber(string.match(m, ':(%d+)$'))
    end
    if #gone < 1000 then
      redis.call('ZREMRANGEBYSCORE', tkey, '-inf', cutoff_s)
      break
    end
    redis.call('ZREM', tkey, unpack(gone))
  end
  return gone_total
end

-- Check every scope; nothing is counted unless all admit. `st[i]` keeps what was read.
local st = {}
local function refuse(i, what, value)
  -- Keep the pruned token sums of the scopes checked so far (their windows were pruned).
  for j = 1, i do
    local s = st[j]
    if s and s.tk_changed then
      redis.call('HSET', KEYS[1 + j], 'tk', int(s.tk))
    end
  end
  return {0, i, what, value}
end

for i = 1, n do
  local key = KEYS[1 + i]
  local a = 11 + (i - 1) * 6
  local v = redis.call('HMGET', key, dayf, monthf, 't', 'r', 'tk', 'tn', 'rn', 'rx', 'tx')
  local s = {
    fresh = not v[1],
    d = tonumber(v[1] or '0'),
    m = tonumber(v[2] or '0'),
    t = tonumber(v[3] or '0'),
    r = tonumber(v[4] or '0'),
    tk = tonumber(v[5] or '0'),
    tn = tonumber(v[6] or '-1'),
    rn = tonumber(v[7] or '-1'),
    rx = tonumber(v[8] or '-1'),
    tx = tonumber(v[9] or '-1'),
    requests = 0,
  }
  st[i] = s
  local rpm = tonumber(ARGV[a + 4])
  local tpm = tonumber(ARGV[a + 5])
  local conc = tonumber(ARGV[a + 6])
  if tpm >= 0 then
    local gone = expire_tokens(key .. 'tpm')
    -- Nothing newer than the cutoff was ever added: the window is empty (also when the
    -- ZSET itself expired).
    if s.tn <= cutoff and s.tk ~= 0 then gone = s.tk end
    if gone ~= 0 then
      s.tk = s.tk - gone
      s.tk_changed = true
    end
  end
  if rpm >= 0 then
    local rkey = key .. 'rpm'
    redis.call('ZREMRANGEBYSCORE', rkey, '-inf', cutoff_s)
    s.requests = redis.call('ZCARD', rkey)
  end
  if request and conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', key .. 'lease', '-inf', ARGV[1])
  end
  local used = {s.d, s.m, s.t}
  for w = 1, 3 do
    local limit = tonumber(ARGV[a + w])
    if limit >= 0 then
      if (cost == 0 and used[w] >= limit) or cost > limit - used[w] then
        return refuse(i, w, used[w])
      end
    end
  end
  if request and rpm >= 0 and s.requests >= rpm then
    local idx = s.requests - rpm
    local e = redis.call('ZRANGE', key .. 'rpm', idx, idx, 'WITHSCORES')
    local retry = 60000
    if #e > 0 then retry = tonumber(e[2]) + 60000 - now end
    return refuse(i, 4, retry)
  end
  if tpm >= 0 then
    if tokens > tpm then
      return refuse(i, 5, 60000)
    end
    if s.tk + tokens > tpm then
      local retry = 60000
      local left = s.tk
      local e = redis.call('ZRANGE', key .. 'tpm', 0, -1, 'WITHSCORES')
      for j = 1, #e, 2 do
        left = left - tonumber(string.match(e[j], ':(%d+)$'))
        if left + tokens <= tpm then
          retry = tonumber(e[j + 1]) + 60000 - now
          break
        end
      end
      return refuse(i, 5, retry)
    end
  end
  if request and conc >= 0 and redis.call('ZCARD', key .. 'lease') >= conc then
    return refuse(i, 6, 1000)
  end
end

-- Count.
local out = {1}
for i = 1, n do
  local key = KEYS[1 + i]
  local a = 11 + (i - 1) * 6
  local s = st[i]
  if s.fresh then
    -- The first decision of a day (or of this scope): drop the windows no longer kept
    -- (today and the two days before; this month and the one before).
    local old = {}
    for _, f in ipairs(redis.call('HKEYS', key)) do
      local kind, w = string.match(f, '^([dm])(%-?%d+)$')
      if kind == 'd' and tonumber(w) < day - 2 then table.insert(old, f) end
      if kind == 'm' and tonumber(w) < month - 1 then table.insert(old, f) end
    end
    if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  end
  s.d = s.d + cost
  s.m = s.m + cost
  s.t = s.t + cost
  local set = {dayf, int(s.d), monthf, int(s.m), 't', int(s.t), 'r', int(s.r + cost)}
  local newest_request = -1
  local rpm = tonumber(ARGV[a + 4])
  if rpm >= 0 then
    if request then
      local rkey = key .. 'rpm'
      redis.call('ZADD', rkey, ARGV[1], hold)
      if s.requests == 0 or now > s.rn then s.rn = now end
      s.requests = s.requests + 1
      table.insert(set, 'rn')
      table.insert(set, int(s.rn))
      if now >= s.rx + 60000 or now < s.rx then
        redis.call('PEXPIRE', rkey, ZSET_TTL)
        table.insert(set, 'rx')
        table.insert(set, ARGV[1])
      end
    end
    if s.requests > 0 then newest_request = s.rn end
  end
  local newest_tokens = -1
  if tonumber(ARGV[a + 5]) >= 0 then
    local tkey = key .. 'tpm'
    redis.call('ZADD', tkey, ARGV[1], ARGV[10])
    s.tk = s.tk + tokens
    if s.tn <= cutoff or now > s.tn then s.tn = now end
    newest_tokens = s.tn
    table.insert(set, 'tk')
    table.insert(set, int(s.tk))
    table.insert(set, 'tn')
    table.insert(set, int(s.tn))
    if now >= s.tx + 60000 or now < s.tx then
      redis.call('PEXPIRE', tkey, ZSET_TTL)
      table.insert(set, 'tx')
      table.insert(set, ARGV[1])
    end
  end
  if request and tonumber(ARGV[a + 6]) >= 0 then
    local lkey = key .. 'lease'
    redis.call('ZADD', lkey, expiry, hold)
    redis.call('PEXPIRE', lkey, tonumber(expiry) - now + 60000)
  end
  redis.call('HSET', key, unpack(set))
  table.insert(out, s.d)
  table.insert(out, s.m)
  table.insert(out, s.t)
  table.insert(out, s.requests)
  table.insert(out, newest_request)
  table.insert(out, s.tk)
  table.insert(out, newest_tokens)
end
redis.call('ZADD', KEYS[1], expiry, ARGV[9])
return out
