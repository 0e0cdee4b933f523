-- The settles and decisions of one group waiting together, atomically (see redis.rs for the
-- keys and why several ride in one call). The settles go first, summed per scope by the
-- caller; then each decision in order, with exactly the effect it would have alone. The
-- script reads every scope's HASH once, works on that copy and writes it back at the end.
-- KEYS[1] the group's holds ZSET (member the hold's record, score its expiry), then the
-- HASH of every scope named below (by index into KEYS). A scope's minute windows are that
-- key with 'rw' (HASH: millisecond -> requests), 'tw' (HASH: millisecond -> tokens) and 'wi'
-- (ZSET: the milliseconds of both, by time) appended, its leases with 'lease': same hash
-- tag, same slot.
-- ARGV[1]: packed little-endian (`struct`: no number is parsed from text; i8 an 8-byte
-- integer, i4 4 bytes, i1 one, s an i4 length then the bytes):
--   i4 count, then per scope the decisions name: i4 KEYS index, i8 budget day, month,
--     total, rpm, tpm, concurrency (-1: none);
--   i4 count, then per (scope, day, month) the settles touch: i4 KEYS index, i8 day,
--     month, what was spent, what those holds reserved;
--   i4 count, then per (scope, millisecond) whose tokens window holds settled entries: i4
--     KEYS index, i8 millisecond, tokens reserved, tokens spent;
--   i4 count, then per lease to give back: i4 KEYS index, s lease id;
--   i1 1 where the decisions may be taken together (see below), then: i8 the earliest and
--     latest now, i4 their day and month, then per scope of the first list i8 the sum of
--     the decisions' costs, requests and tokens, the largest tokens of one, the latest now
--     of a request counted by its rpm (-1: none), of any decision counted by its tpm; i4
--     count, then per millisecond i8 the ms, the requests and tokens its windows gain;
--   then the decisions, each i8 now, cost, tokens, the hold's expiry, i1 request (0/1), i4
--     day, month, s the hold's record, i4 scope count, then per scope i4 its index in the
--     first list.
-- ARGV[2]: the latest cutoff (now - 1 minute) of any decision ('' for none): the windows'
-- buckets at or before it are the only ones this call may prune.
-- ARGV[3]: how many holds are settled; ARGV[4...]: their records, then per decision the
-- hold's expiry and record.
-- Decisions that all fit (every scope stays strictly inside its budgets and within its rates
-- even if the minute's windows are pruned only as far as the earliest decision's cutoff,
-- all on one day, no concurrency limit, no hold due to expire) are taken together: each is
-- admitted, exactly as it would be alone, and the call returns {2, then per scope of the
-- first list, its counters before them: day, month, total, requests, newest request, tokens,
-- newest tokens} from which the caller rebuilds each one's reply in order. Otherwise,
-- Returns, per decision, a refusal {0, scope, what, value} (what 1-3 budget day/month/total
-- with value the used amount, 4-6 rpm/tpm/concurrency with value the retry delay), or {1,
-- then per scope what its limits read: the day's, month's and total spend where those
-- budgets are set, requests and the newest request's ms where rpm is, tokens and the newest
-- tokens' ms where tpm is (-1: none)}.
-- Integers only: every value stays below 2^53, where Lua's doubles are exact.
-- Scope HASH fields: 'd<day>', 'm<month>', 't' (spend: settled + reserved), 'r' (the cost
-- of outstanding holds), 'rq'/'tk' (requests/tokens in the minute windows), 'rn'/'tn' (the
-- newest request/tokens ms), 'pc' (the latest cutoff the windows were pruned to: a bucket
-- at or before it is gone), 'wx' (when the windows' TTL was last renewed).

local MINUTE = 60000
-- A window's keys are renewed at most once a minute, to 3 minutes: they always outlive
-- their newest entry by more than 2 minutes.
local WINDOW_TTL = 180000
local SWEEP_CHUNK = 500

local call = redis.call
local unpack_ = struct.unpack
local fmt = string.format
local blob = ARGV[1]
local maxcut = tonumber(ARGV[2])
local holds_key = KEYS[1]
-- The group's key prefix ('bourse:{group}:'), which hold records name scopes under.
local prefix = string.sub(holds_key, 1, #holds_key - 5)
local swept_key = prefix .. 'swept'
local SWEPT_TTL = 86400000

-- Integers as text. Lua's own conversion keeps 14 digits; a number passed to redis.call is
-- written in full (every value here is an integer below 2^53), so values go as numbers and
-- only field names and bounds built in Lua use this.
local function int(x)
  return fmt('%d', x)
end

-- `cmd key list[i..j]`. Lua's unpack spreads at most ~8,000 values (LUAI_MAXCSTACK) and a
-- window pruned after a busy minute lists one bucket per millisecond (up to 60,000), so the
-- list goes in pieces of PIECE (even: field-value and score-member pairs stay whole); array
-- replies are joined, integer replies summed. Only for commands whose pieces add up to the
-- whole (HMGET, HDEL, HSET, ZADD, ZREM, SADD, SMISMEMBER).
local PIECE = 4000
local function spread(cmd, key, list, i, j)
  i, j = i or 1, j or #list
  local out = nil
  while i <= j do
    local k = math.min(j, i + PIECE - 1)
    local r = call(cmd, key, unpack(list, i, k))
    if type(r) == 'table' then
      out = out or {}
      for x = 1, k - i + 1 do out[#out + 1] = r[x] end
    else
      out = (out or 0) + r
    end
    i = k + 1
  end
  return out
end

local function clamp0(x)
  if x < 0 then return 0 end
  return x
end

-- Field names of days and months, built once per call.
local dnames, mnames = {}, {}
local function dname(d)
  local f = dnames[d]
  if not f then f = 'd' .. int(d); dnames[d] = f end
  return f
end
local function mname(m)
  local f = mnames[m]
  if not f then f = 'm' .. int(m); mnames[m] = f end
  return f
end

-- Scopes, read once (HGETALL) on first use and written back whole at the end.
local cache = {}
local order = {}
local function scope(key)
  local s = cache[key]
  if s then return s end
  local h = {}
  local all = call('HGETALL', key)
  for j = 1, #all, 2 do
    h[all[j]] = tonumber(all[j + 1])
  end
  s = {key = key, h = h}
  cache[key] = s
  order[#order + 1] = s
  return s
end

-- The minute windows of a scope, per millisecond bucket. `b[ms]` is a bucket this call
-- touched or may prune: r0/t0 what Redis has (only read for buckets at or before the
-- latest cutoff of this call, the only ones it can prune), dr/dt what this call adds.
-- `due` lists, in time order from `di`, the buckets this call may still prune.
local function window(s)
  local w = s.w
  if w then return w end
  w = {b = {}, due = {}, di = 1, touched = {}, nt = 0, reset = false, gone = {}}
  s.w = w
  local h = s.h
  local pc = h.pc or -1
  if maxcut and maxcut > pc and math.max(h.rn or -1, h.tn or -1) > pc then
    local ms = call('ZRANGEBYSCORE', s.key .. 'wi', '-inf', maxcut)
    if #ms > 0 then
      local r = spread('HMGET', s.key .. 'rw', ms)
      local t = spread('HMGET', s.key .. 'tw', ms)
      for j, m in ipairs(ms) do
        local at = tonumber(m)
        w.b[at] = {r0 = tonumber(r[j] or '0'), t0 = tonumber(t[j] or '0'), dr = 0, dt = 0}
        w.due[#w.due + 1] = at
      end
    end
  end
  return w
end

local function bucket(w, at)
  local b = w.b[at]
  if not b then
    b = {r0 = 0, t0 = 0, dr = 0, dt = 0}
    w.b[at] = b
    -- Every bucket at or before the latest cutoff was read by window(): this one is new, and
    -- joins the buckets this call may still prune, in order.
    if maxcut and at <= maxcut then
      local j = #w.due + 1
      while j > w.di and w.due[j - 1] > at do j = j - 1 end
      table.insert(w.due, j, at)
    end
  end
  if not b.touched then
    b.touched = true
    w.nt = w.nt + 1
    w.touched[w.nt] = at
  end
  return b
end

-- Drops what left the minute before `now` from the scope's windows (the caller checked
-- that the cutoff moved past 'pc').
local function prune(s, now)
  local h = s.h
  local cutoff = now - MINUTE
  local pc = h.pc or -1
  local w = window(s)
  h.pc = cutoff
  -- Nothing newer than the cutoff was ever added: the windows are empty (also when their
  -- keys expired). Their keys go if anything may be left in them.
  local newest = math.max(h.rn or -1, h.tn or -1)
  if newest <= cutoff then
    if newest > pc or (h.rq or 0) ~= 0 or (h.tk or 0) ~= 0 or w.nt > 0 or w.due[w.di] then
      h.rq = 0
      h.tk = 0
      w.reset = true
      w.b = {}
      w.due = {}
      w.di = 1
      w.touched = {}
      w.nt = 0
      w.gone = {}
    end
    return
  end
  local due = w.due
  while due[w.di] and due[w.di] <= cutoff do
    local at = due[w.di]
    local b = w.b[at]
    w.di = w.di + 1
    if b then
      h.rq = clamp0((h.rq or 0) - (b.r0 + b.dr))
      h.tk = clamp0((h.tk or 0) - (b.t0 + b.dt))
      w.b[at] = nil
      w.gone[#w.gone + 1] = at
    end
  end
end

-- Writes the scope's window changes to Redis.
local function flush_window(s, now)
  local w = s.w
  if not w then return end
  local rw, tw, wi = s.key .. 'rw', s.key .. 'tw', s.key .. 'wi'
  if w.reset then
    call('DEL', rw, tw, wi)
    w.reset = false
  end
  if #w.gone > 0 then
    spread('HDEL', rw, w.gone)
    spread('HDEL', tw, w.gone)
    spread('ZREM', wi, w.gone)
    w.gone = {}
  end
  local index = {}
  for j = 1, w.nt do
    local at = w.touched[j]
    local b = w.b[at]
    if b then
      b.touched = false
      if b.dr ~= 0 or b.dt ~= 0 then
        local f = int(at)
        if b.dr ~= 0 then call('HINCRBY', rw, f, b.dr) end
        if b.dt ~= 0 then call('HINCRBY', tw, f, b.dt) end
        index[#index + 1] = f
        index[#index + 1] = f
        b.r0, b.t0, b.dr, b.dt = b.r0 + b.dr, b.t0 + b.dt, 0, 0
      end
    end
  end
  w.touched, w.nt = {}, 0
  if #index > 0 then
    spread('ZADD', wi, index)
    local wx = s.h.wx or -1
    if now and (now >= wx + MINUTE or now < wx) then
      call('PEXPIRE', rw, WINDOW_TTL)
      call('PEXPIRE', tw, WINDOW_TTL)
      call('PEXPIRE', wi, WINDOW_TTL)
      s.h.wx = now
    end
  end
end

-- The first bucket after `cutoff`, oldest first, at which `enough(requests, tokens)` says
-- stop (refusals only: it writes the scope's window first, then reads it in chunks).
local function walk(s, cutoff, now, enough)
  flush_window(s, now)
  local offset = 0
  while true do
    local ms = call('ZRANGEBYSCORE', s.key .. 'wi', '(' .. int(cutoff), '+inf', 'LIMIT', offset, 256)
    if #ms == 0 then return nil end
    local r = spread('HMGET', s.key .. 'rw', ms)
    local t = spread('HMGET', s.key .. 'tw', ms)
    for j, m in ipairs(ms) do
      if enough(tonumber(r[j] or '0'), tonumber(t[j] or '0')) then return tonumber(m) end
    end
    if #ms < 256 then return nil end
    offset = offset + #ms
  end
end

-- Each scope of a record, 'id cost day month' then ' <length>:<scope key suffix>' per
-- scope, as (scope, cost, day, month).
local function record_scopes(rec, f)
  local c, d, m, p = string.match(rec, '^%d+ (%d+) (%-?%d+) (%-?%d+)()')
  c = tonumber(c)
  while c ~= 0 and p <= #rec do
    local len, q = string.match(rec, '^ (%d+):()', p)
    f(scope(prefix .. string.sub(rec, q, q + len - 1)), c, d, m)
    p = q + len
  end
end

-- The holds ZSET: outstanding holds by expiry; this call's new holds are added at the end
-- (or before a sweep reads the ZSET).
local adds, nadds = {}, 0
local earliest = nil
local function flush_holds()
  if nadds > 0 then
    spread('ZADD', holds_key, adds, 1, nadds)
    adds, nadds = {}, 0
  end
end
local function find_earliest()
  local e = call('ZRANGE', holds_key, 0, 0, 'WITHSCORES')
  if #e == 0 then return nil end
  return tonumber(e[2])
end

-- Release the reservations of the group's holds expired at `now` (rare: their replica died).
-- Their records go to the group's swept SET (kept a day), which is how a settle arriving
-- after the sweep knows its reservation is already given back.
local function sweep(now)
  flush_holds()
  while true do
    local records = call('ZRANGEBYSCORE', holds_key, '-inf', now, 'LIMIT', 0, SWEEP_CHUNK)
    if #records == 0 then break end
    for _, rec in ipairs(records) do
      record_scopes(rec, function(s, c, d, m)
        local h = s.h
        for _, f in ipairs({'d' .. d, 'm' .. m, 't', 'r'}) do
          local v = h[f]
          if v then h[f] = clamp0(v - c) end
        end
      end)
    end
    spread('ZREM', holds_key, records)
    spread('SADD', swept_key, records)
    call('PEXPIRE', swept_key, SWEPT_TTL)
    if #records < SWEEP_CHUNK then break end
  end
  earliest = find_earliest()
end

local p = 1
local n
-- The scopes the decisions name, with their limits.
local entries = {}
n, p = unpack_('<i4', blob, p)
for i = 1, n do
  local e = {}
  local idx
  idx, e.d, e.m, e.t, e.rpm, e.tpm, e.conc, p = unpack_('<i4i8i8i8i8i8i8', blob, p)
  e.s = scope(KEYS[idx])
  entries[i] = e
end

-- The settles. A hold still outstanding gives back its reservation; one already swept after
-- its TTL gave it back then, so only the spend is added (what the sums took off is put back;
-- a hold neither outstanding nor swept counts as outstanding).
local sums = {}
n, p = unpack_('<i4', blob, p)
for i = 1, n do
  local idx, day, month, spent, held
  idx, day, month, spent, held, p = unpack_('<i4i8i8i8i8', blob, p)
  sums[i] = {s = scope(KEYS[idx]), d = dname(day), m = mname(month), spent = spent, held = held}
end
local nsettled = tonumber(ARGV[3])
if nsettled > 0 then
  local records = {}
  for j = 1, nsettled do records[j] = ARGV[3 + j] end
  if spread('ZREM', holds_key, records) < nsettled then
    local swept = spread('SMISMEMBER', swept_key, records)
    for j, rec in ipairs(records) do
      if swept[j] == 1 then
        record_scopes(rec, function(s, c, d, m)
          for _, x in ipairs(sums) do
            if x.s == s and x.d == 'd' .. d and x.m == 'm' .. m then
              x.held = x.held - c
              break
            end
          end
        end)
        call('SREM', swept_key, rec)
      end
    end
  end
end
for _, x in ipairs(sums) do
  local h = x.s.h
  local delta = x.spent - x.held
  -- A counter not there (a window no longer kept) is 0: only a spend creates it.
  local v = h[x.d]
  if v or delta > 0 then h[x.d] = clamp0((v or 0) + delta) end
  v = h[x.m]
  if v or delta > 0 then h[x.m] = clamp0((v or 0) + delta) end
  v = h.t
  if v or delta > 0 then h.t = clamp0((v or 0) + delta) end
  if x.held ~= 0 and h.r then h.r = clamp0(h.r - x.held) end
end
-- Settled tokens, where their bucket is still in the window, count what was spent.
n, p = unpack_('<i4', blob, p)
for _ = 1, n do
  local idx, at, reserved, spent
  idx, at, reserved, spent, p = unpack_('<i4i8i8i8', blob, p)
  local s = scope(KEYS[idx])
  local h = s.h
  if at > (h.pc or -1) then
    local b = bucket(window(s), at)
    b.dt = b.dt + spent - reserved
    local tk = h.tk or 0
    if reserved > tk then reserved = tk end
    h.tk = tk - reserved + spent
  end
end
n, p = unpack_('<i4', blob, p)
for _ = 1, n do
  local idx, lease
  idx, lease, p = unpack_('<i4i4c0', blob, p)
  call('ZREM', KEYS[idx] .. 'lease', lease)
end

if maxcut then earliest = find_earliest() end

-- The decisions taken together, when they all fit.
local together, minnow, maxnow, day, month
together, p = unpack_('<i1', blob, p)
local totals = {}
if together == 1 then
  minnow, maxnow, day, month, p = unpack_('<i8i8i4i4', blob, p)
  for i = 1, #entries do
    local t = {}
    t.cost, t.requests, t.tokens, t.most, t.rn, t.tn, n, p = unpack_('<i8i8i8i8i8i8i4', blob, p)
    t.buckets = {}
    for j = 1, n do
      local at, r, k
      at, r, k, p = unpack_('<i8i8i8', blob, p)
      t.buckets[j] = {at, r, k}
    end
    totals[i] = t
  end
  if earliest and maxnow >= earliest then together = 0 end
end
if together == 1 then
  local dayf, monthf = dname(day), mname(month)
  local cutoff = minnow - MINUTE
  for i, e in ipairs(entries) do
    local h, t = e.s.h, totals[i]
    if cutoff > (h.pc or -1) then prune(e.s, minnow) end
    local function fits(limit, used)
      return limit < 0 or used + t.cost < limit
    end
    if not (fits(e.d, h[dayf] or 0) and fits(e.m, h[monthf] or 0) and fits(e.t, h.t or 0)) then
      together = 0
    elseif e.rpm >= 0 and (h.rq or 0) + t.requests > e.rpm then
      together = 0
    elseif e.tpm >= 0 and ((h.tk or 0) + t.tokens > e.tpm or t.most > e.tpm) then
      together = 0
    end
  end
end
if together == 1 then
  local dayf, monthf = dname(day), mname(month)
  local out = {2}
  for i, e in ipairs(entries) do
    local s, t = e.s, totals[i]
    local h = s.h
    local d = h[dayf]
    local rq, tk = h.rq or 0, h.tk or 0
    out[#out + 1] = d or 0
    out[#out + 1] = h[monthf] or 0
    out[#out + 1] = h.t or 0
    if rq > 0 then out[#out + 1], out[#out + 2] = rq, h.rn or -1 else out[#out + 1], out[#out + 2] = 0, -1 end
    out[#out + 1], out[#out + 2] = tk, h.tn or -1
    if d == nil then
      for f, _ in pairs(h) do
        local kind, x = string.match(f, '^([dm])(%-?%d+)$')
        if (kind == 'd' and tonumber(x) < day - 2) or (kind == 'm' and tonumber(x) < month - 1) then
          h[f] = nil
          s.del = s.del or {}
          s.del[#s.del + 1] = f
        end
      end
    end
    h[dayf] = (d or 0) + t.cost
    h[monthf] = (h[monthf] or 0) + t.cost
    h.t = (h.t or 0) + t.cost
    h.r = (h.r or 0) + t.cost
    if #t.buckets > 0 then
      local w = s.w or window(s)
      for _, b in ipairs(t.buckets) do
        local x = bucket(w, b[1])
        x.dr = x.dr + b[2]
        x.dt = x.dt + b[3]
      end
    end
    if t.requests > 0 then
      h.rq = rq + t.requests
      if rq == 0 or t.rn > (h.rn or -1) then h.rn = t.rn end
    end
    if t.tn >= 0 then
      h.tk = tk + t.tokens
      if t.tn > (h.tn or -1) then h.tn = t.tn end
    end
    if maxnow - MINUTE > (h.pc or -1) then prune(s, maxnow) end
    s.now = maxnow
  end
  if #ARGV > 3 + nsettled then spread('ZADD', holds_key, ARGV, 4 + nsettled) end
  for _, s in ipairs(order) do
    flush_window(s, s.now)
    local fields, nf = {}, 0
    for f, v in pairs(s.h) do
      fields[nf + 1] = f
      fields[nf + 2] = v
      nf = nf + 2
    end
    if nf > 0 then spread('HSET', s.key, fields, 1, nf) end
    if s.del then spread('HDEL', s.key, s.del) end
  end
  return out
end

-- The decisions, one by one.
local out, no = {}, 0
local function refuse(i, what, value)
  out[no + 1], out[no + 2], out[no + 3], out[no + 4] = 0, i, what, value
  no = no + 4
end
local rs = {}

local len = #blob
while p <= len do
  local now, cost, tokens, expiry, request, day, month, record, ns
  now, cost, tokens, expiry, request, day, month, record, ns, p = unpack_('<i8i8i8i8i1i4i4i4c0i4', blob, p)
  request = request == 1
  local dayf, monthf = dname(day), mname(month)
  local cutoff = now - MINUTE
  if earliest and now >= earliest then sweep(now) end

  -- Check every scope; nothing is counted unless all admit.
  local refused = false
  for i = 1, ns do
    local ei
    ei, p = unpack_('<i4', blob, p)
    local e = entries[ei]
    rs[i] = e
    if not refused then
      local s = e.s
      local h = s.h
      if cutoff > (h.pc or -1) then prune(s, now) end
      if request and e.conc >= 0 then
        call('ZREMRANGEBYSCORE', s.key .. 'lease', '-inf', now)
      end
      local used, limit = h[dayf] or 0, e.d
      if limit >= 0 and ((cost == 0 and used >= limit) or cost > limit - used) then
        refuse(i, 1, used)
        refused = true
      end
      used, limit = h[monthf] or 0, e.m
      if not refused and limit >= 0 and ((cost == 0 and used >= limit) or cost > limit - used) then
        refuse(i, 2, used)
        refused = true
      end
      used, limit = h.t or 0, e.t
      if not refused and limit >= 0 and ((cost == 0 and used >= limit) or cost > limit - used) then
        refuse(i, 3, used)
        refused = true
      end
      local rpm = e.rpm
      local requests = h.rq or 0
      if not refused and request and rpm >= 0 and requests >= rpm then
        -- One more fits once enough of the oldest have left the minute.
        local left = requests
        local at = walk(s, cutoff, now, function(r, _)
          left = left - r
          return left < rpm
        end)
        local retry = MINUTE
        if at then retry = at + MINUTE - now end
        refuse(i, 4, retry)
        refused = true
      end
      local tpm = e.tpm
      if not refused and tpm >= 0 then
        local used_tokens = h.tk or 0
        if tokens > tpm then
          refuse(i, 5, MINUTE)
          refused = true
        elseif used_tokens + tokens > tpm then
          local left = used_tokens
          local at = walk(s, cutoff, now, function(_, t)
            left = left - t
            return left + tokens <= tpm
          end)
          local retry = MINUTE
          if at then retry = at + MINUTE - now end
          refuse(i, 5, retry)
          refused = true
        end
      end
      if not refused and request and e.conc >= 0 and call('ZCARD', s.key .. 'lease') >= e.conc then
        refuse(i, 6, 1000)
        refused = true
      end
    end
  end

  if not refused then
    -- Count.
    no = no + 1
    out[no] = 1
    for i = 1, ns do
      local e = rs[i]
      local s = e.s
      local h = s.h
      local d = h[dayf]
      if d == nil then
        -- The first decision of a day (or of this scope): drop the windows no longer kept
        -- (today and the two days before; this month and the one before).
        for f, _ in pairs(h) do
          local kind, x = string.match(f, '^([dm])(%-?%d+)$')
          if (kind == 'd' and tonumber(x) < day - 2) or (kind == 'm' and tonumber(x) < month - 1) then
            h[f] = nil
            s.del = s.del or {}
            s.del[#s.del + 1] = f
          end
        end
        d = 0
      end
      d = d + cost
      h[dayf] = d
      local m = (h[monthf] or 0) + cost
      h[monthf] = m
      local t = (h.t or 0) + cost
      h.t = t
      h.r = (h.r or 0) + cost
      if e.d >= 0 then no = no + 1; out[no] = d end
      if e.m >= 0 then no = no + 1; out[no] = m end
      if e.t >= 0 then no = no + 1; out[no] = t end
      if e.rpm >= 0 then
        local requests = h.rq or 0
        if request then
          local b = bucket(s.w or window(s), now)
          b.dr = b.dr + 1
          requests = requests + 1
          h.rq = requests
          if requests == 1 or now > (h.rn or -1) then h.rn = now end
        end
        out[no + 1] = requests
        if requests > 0 then out[no + 2] = h.rn else out[no + 2] = -1 end
        no = no + 2
      end
      if e.tpm >= 0 then
        local b = bucket(s.w or window(s), now)
        b.dt = b.dt + tokens
        h.tk = (h.tk or 0) + tokens
        if now > (h.tn or -1) then h.tn = now end
        out[no + 1], out[no + 2] = h.tk, h.tn
        no = no + 2
      end
      if request and e.conc >= 0 then
        local lkey = s.key .. 'lease'
        call('ZADD', lkey, expiry, string.match(record, '^%d+'))
        call('PEXPIRE', lkey, expiry - now + MINUTE)
      end
      s.now = now
    end
    adds[nadds + 1], adds[nadds + 2] = expiry, record
    nadds = nadds + 2
    if earliest == nil or expiry < earliest then earliest = expiry end
  end
end

for _, s in ipairs(order) do
  flush_window(s, s.now)
  local fields, nf = {}, 0
  for f, v in pairs(s.h) do
    fields[nf + 1] = f
    fields[nf + 2] = v
    nf = nf + 2
  end
  if nf > 0 then spread('HSET', s.key, fields, 1, nf) end
  if s.del then spread('HDEL', s.key, s.del) end
end
flush_holds()
return out
