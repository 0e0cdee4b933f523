-- A scope's counters at ARGV[1] (now), read-only: holds expired but not yet swept are
-- counted as the next sweep will leave them (their cost taken off).
-- KEYS: the group's holds ZSET (member the hold's record), the scope's HASH, its leases ZSET.
-- ARGV: now, day, month, the scope's key suffix (as hold records name it).
-- Returns {day, month, total, reserved, in flight}.
local v = redis.call('HMGET', KEYS[2], 'd' .. ARGV[2], 'm' .. ARGV[3], 't', 'r')
for i = 1, 4 do
  v[i] = tonumber(v[i] or '0')
end
local offset = 0
while true do
  local records = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', offset, 500)
  if #records == 0 then break end
  for _, rec in ipairs(records) do
    local c, d, m, p = string.match(rec, '^%d+ (%d+) (%-?%d+) (%-?%d+)()')
    c = tonumber(c)
    while p <= #rec do
      local len, q = string.match(rec, '^ (%d+):()', p)
      local suffix = string.sub(rec, q, q + len - 1)
      p = q + len
      if suffix == ARGV[4] then
        if d == ARGV[2] then v[1] = v[1] - c end
        if m == ARGV[3] then v[2] = v[2] - c end
        v[3] = v[3] - c
        v[4] = v[4] - c
      end
    end
  end
  if #records < 500 then break end
  offset = offset + #records
end
for i = 1, 4 do
  if v[i] < 0 then v[i] = 0 end
end
table.insert(v, redis.call('ZCOUNT', KEYS[3], '(' .. ARGV[1], '+inf'))
return v
