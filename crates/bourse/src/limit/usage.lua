-- A scope's counters at ARGV[1] (now), read-only: holds expired but not yet swept are
-- counted as the next sweep will leave them (their cost taken off).
-- KEYS: the group's holds ZSET, day, month, total, reserved, leases ZSET.
-- ARGV: now, the prefix of hold HASH keys.
-- Returns {day, month, total, reserved, in flight}.
local v = {}
for i = 2, 5 do
  v[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  local fields = redis.call('HGETALL', ARGV[2] .. id)
  local c = 0
  for j = 1, #fields, 2 do
    if fields[j] == 'c' then c = tonumber(fields[j + 1]) end
  end
  for j = 1, #fields, 2 do
    if fields[j] ~= 'c' then
      for i = 2, 5 do
        if fields[j + 1] == KEYS[i] then v[i] = v[i] - c end
      end
    end
  end
end
local out = {}
for i = 2, 5 do
  if v[i] < 0 then v[i] = 0 end
  table.insert(out, v[i])
end
table.insert(out, redis.call('ZCOUNT', KEYS[6], '(' .. ARGV[1], '+inf'))
return out
