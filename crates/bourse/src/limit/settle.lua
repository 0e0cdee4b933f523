-- Settle one hold at what was spent, and optionally release a lease (see redis.rs).
-- KEYS[1] the group's holds ZSET, then the HASH of each of the hold's scopes, then the
-- leases ZSETs to release the lease from.
-- ARGV: the hold's record (its member in the holds ZSET), hold id, spent cost, spent
-- tokens, reserved cost, reserved tokens, the hold's ts, its day, its month, scope count,
-- lease id ('' for none), then per scope '1' where the hold has an entry in that scope's
-- tokens window ('0' elsewhere), as one string.
-- A hold still outstanding gives back its reservation; one already swept after its TTL
-- gave it back then, so only the spend is added.
local hold = ARGV[2]
local n = tonumber(ARGV[10])
local held = 0
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  held = tonumber(ARGV[5])
end
local delta = tonumber(ARGV[3]) - held
local dayf = 'd' .. ARGV[8]
local monthf = 'm' .. ARGV[9]
local names = {dayf, monthf, 't'}

-- Integers go to Redis as strings formatted as integers (a number would be formatted as a
-- double).
local function int(x)
  if x < 0 then x = 0 end
  return string.format('%d', x)
end

for i = 1, n do
  local key = KEYS[1 + i]
  local tpm = string.byte(ARGV[12], i) == 49 -- '1'
  local v
  if tpm then
    v = redis.call('HMGET', key, dayf, monthf, 't', 'r', 'tk')
  else
    v = redis.call('HMGET', key, dayf, monthf, 't', 'r')
  end
  local set = {}
  -- A counter not there (a window no longer kept) is 0: only a spend creates it.
  for j = 1, 3 do
    if v[j] or delta > 0 then
      table.insert(set, names[j])
      table.insert(set, int(tonumber(v[j] or '0') + delta))
    end
  end
  if held ~= 0 and v[4] then
    table.insert(set, 'r')
    table.insert(set, int(tonumber(v[4]) - held))
  end
  -- The hold's tokens entry, if still in the window, now counts what was spent.
  if tpm then
    local tkey = key .. 'tpm'
    if redis.call('ZREM', tkey, hold .. ':' .. ARGV[6]) == 1 then
      redis.call('ZADD', tkey, ARGV[7], hold .. ':' .. ARGV[4])
      table.insert(set, 'tk')
      table.insert(set, int(tonumber(v[5] or '0') - tonumber(ARGV[6]) + tonumber(ARGV[4])))
    end
  end
  if #set > 0 then
    redis.call('HSET', key, unpack(set))
  end
end
if ARGV[11] ~= '' then
  for j = 2 + n, #KEYS do
    redis.call('ZREM', KEYS[j], ARGV[11])
  end
end
return 1
