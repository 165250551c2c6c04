package redis

// libName is the Redis function library; its version is part of the name
// (and of every function name) so that servers of two versions can share
// one Redis during a rolling upgrade. Change the code only together with
// the version. v2 added balloc (the whole batch in one atomic call),
// cclaim and crelease (dedup claims); the keys and their meaning are those
// of v1. v3 records the allocating server instance in each pending entry
// ("<first>:<last>:<instance>:<deadline_ms>"; v2 parses the deadline at
// the end, so v2 servers read v3 entries right), lets uhorizon drop the
// pending entries of instances the caller names as dead (fenced), lets
// cclaim take over the claims of dead instances, and adds lrenew (the
// instance leases).
const libName = "chatd_seq_v3"

// Function names of the library.
const (
	fnUserAlloc    = "chatd_seq_v3_ualloc"
	fnUserCommit   = "chatd_seq_v3_ucommit"
	fnUserAbort    = "chatd_seq_v3_uabort"
	fnUserHorizon  = "chatd_seq_v3_uhorizon"
	fnUserInit     = "chatd_seq_v3_uinit"
	fnChanAlloc    = "chatd_seq_v3_calloc"
	fnChanInit     = "chatd_seq_v3_cinit"
	fnBatchAlloc   = "chatd_seq_v3_balloc"
	fnClaim        = "chatd_seq_v3_cclaim"
	fnClaimRelease = "chatd_seq_v3_crelease"
	fnLeaseRenew   = "chatd_seq_v3_lrenew"
)

// library is the Lua code of the Redis functions (Redis 7 FUNCTION LOAD).
//
// Keys (all of one inbox or channel share a hash tag, so each function
// touches one Redis Cluster slot):
//
//	<prefix>{u:<user>}    hash: c = last allocated seq, b = durably
//	                      reserved bound (every allocated seq <= b),
//	                      e = epoch, r = incarnation of the Redis process
//	                      that wrote the hash
//	<prefix>{u:<user>}:p  zset of pending allocations: member
//	                      "<first>:<last>:<instance>:<deadline_ms>" (v2:
//	                      "<first>:<last>:<deadline_ms>"), score first
//	<prefix>{c:<channel>} hash: m, k = last allocated message id as
//	                      (unix ms, counter) = m<<16 | k; b = durably
//	                      reserved bound in ms (every allocated id has
//	                      m <= b); r as above
//	<prefix>{u:<user>}:d:<client_message_id>
//	                      string: a dedup claim (Allocator.Claim), the
//	                      claimer's value "<instance>:<n>"; it expires (PX)
//	<prefix>instances     zset: every allocator instance, score = the
//	                      Redis time (ms) of its last lease renewal
//
// A hash whose r is not this process's run_id was written by another
// Redis process (a restart from a stale RDB/AOF, or a replica promoted
// with replication lag): its values may be behind what was allocated, so
// it is treated like a missing hash and must be initialised again from the
// durable bound (INIT). The run_id is cached per library load: it is
// constant for the life of the process.
//
// Numbers: Lua numbers are doubles, exact up to 2^53; seqs and ms stay far
// below. Message ids (ms<<16, about 2^57) never appear as one number: they
// are split into (ms, counter). Numbers written to Redis are formatted
// with %d.
//
// Time: deadlines use the Redis server clock (TIME), one clock for every
// chat server; the channel id floor uses the chat server's clock passed
// in (it is also the message's created_at).
const library = `#!lua name=chatd_seq_v3

local rid
local function me()
  if not rid then
    rid = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  end
  return rid
end

local function d(x) return string.format('%d', x) end

local function nowms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Appends the values to the array t.
local function push(t, ...)
  local n = #t
  for i = 1, select('#', ...) do t[n + i] = select(i, ...) end
end

local function deadline(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

-- The instance of a v3 pending entry, nil for a v2 entry.
local function owner(member)
  return string.match(member, '^%d+:%d+:([^:]+):%d+$')
end

-- A set of the dead instances listed in args from index i on.
local function deadset(args, i)
  local set = nil
  for j = i, #args do
    set = set or {}
    set[args[j]] = true
  end
  return set
end

-- Drops expired entries, and entries of dead instances, at the low end of
-- the pending set (their seqs become holes). Returns the lowest live
-- entry's first seq, or nil, and how many entries of dead instances were
-- dropped.
local function trim(z, now, dead)
  local fenced = 0
  for _ = 1, 1000 do
    local m = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
    if #m == 0 then return nil, fenced end
    local gone = dead and dead[owner(m[1]) or '']
    if not gone and deadline(m[1]) > now then return tonumber(m[2]), fenced end
    if gone then fenced = fenced + 1 end
    redis.call('ZREM', z, m[1])
  end
  local m = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #m == 0 then return nil, fenced end
  return tonumber(m[2]), fenced
end

-- Plans the allocation of n seqs of a user without changing anything.
-- nb raises the bound (0: no change). -> 'OK', plan | 'INIT' | 'RESERVE',
-- needed
local function ucheck(hash, n, nb)
  local h = redis.call('HMGET', hash, 'c', 'b', 'e', 'r')
  if h[4] ~= me() then return 'INIT' end
  local c, b = tonumber(h[1]), tonumber(h[2])
  local raise = nb > b
  if raise then b = nb end
  if c + n > b then return 'RESERVE', c + n end
  return 'OK', {c = c, n = n, b = b, raise = raise, e = h[3]}
end

-- Applies a plan of ucheck for instance inst. -> epoch, first, last
local function uapply(hash, pending, p, ttl, now, inst)
  trim(pending, now, nil)
  local first, last = p.c + 1, p.c + p.n
  if p.raise then
    redis.call('HSET', hash, 'c', d(last), 'b', d(p.b))
  else
    redis.call('HSET', hash, 'c', d(last))
  end
  redis.call('ZADD', pending, d(first), d(first) .. ':' .. d(last) .. ':' .. inst .. ':' .. d(now + ttl))
  return p.e, first, last
end

-- KEYS: hash, pending. ARGV: n, ttl_ms, bound (raise the bound to it; 0:
-- no change), instance. -> {'OK', epoch, first, last} | {'INIT'} |
-- {'RESERVE', needed}
local function ualloc(keys, args)
  local s, p = ucheck(keys[1], tonumber(args[1]), tonumber(args[3]))
  if s == 'INIT' then return {'INIT'} end
  if s == 'RESERVE' then return {'RESERVE', p} end
  local e, first, last = uapply(keys[1], keys[2], p, tonumber(args[2]), nowms(), args[4])
  return {'OK', e, first, last}
end

-- KEYS: hash, pending. ARGV: epoch, first. -> 'OK' | 'STALE'
-- OK: the allocation was still pending (so no reader has passed it) and
-- now counts as written. An entry past its deadline that is still there
-- has not been passed either, so it commits too.
local function ucommit(keys, args)
  local h = redis.call('HMGET', keys[1], 'e', 'r')
  if h[2] ~= me() or h[1] ~= args[1] then return 'STALE' end
  local m = redis.call('ZRANGEBYSCORE', keys[2], args[2], args[2])
  if #m == 0 then return 'STALE' end
  redis.call('ZREM', keys[2], m[1])
  return 'OK'
end

-- KEYS: hash, pending. ARGV: epoch, first. -> 'OK'
local function uabort(keys, args)
  local h = redis.call('HMGET', keys[1], 'e', 'r')
  if h[2] == me() and h[1] == args[1] then
    redis.call('ZREMRANGEBYSCORE', keys[2], args[2], args[2])
  end
  return 'OK'
end

-- KEYS: hash, pending. ARGV: dead instances (their pending entries are
-- dropped now, as if expired). -> {'OK', horizon, dropped entries of dead
-- instances} | {'INIT'}
local function uhorizon(keys, args)
  local h = redis.call('HMGET', keys[1], 'c', 'r')
  if h[2] ~= me() then return {'INIT'} end
  local low, fenced = trim(keys[2], nowms(), deadset(args, 1))
  if low then return {'OK', low - 1, fenced} end
  return {'OK', tonumber(h[1]), fenced}
end

-- KEYS: hash, pending. ARGV: cur, bound, epoch. Sets up the hash unless
-- it is valid already; never lowers cur. -> {'OK', epoch in force}
local function uinit(keys, args)
  local h = redis.call('HMGET', keys[1], 'c', 'e', 'r')
  if h[3] == me() then return {'OK', h[2]} end
  local c, b = tonumber(args[1]), tonumber(args[2])
  if h[1] and tonumber(h[1]) > c then c = tonumber(h[1]) end
  if c > b then b = c end
  redis.call('DEL', keys[2])
  redis.call('HSET', keys[1], 'c', d(c), 'b', d(b), 'e', args[3], 'r', me())
  return {'OK', args[3]}
end

-- Plans the allocation of n message ids of a channel at now_ms without
-- changing anything. nb raises the bound (ms; 0: no change). -> 'OK', plan
-- | 'INIT' | 'RESERVE', last_ms
local function ccheck(hash, n, now, nb)
  local h = redis.call('HMGET', hash, 'm', 'k', 'b', 'r')
  if h[4] ~= me() then return 'INIT' end
  local b = tonumber(h[3])
  local raise = nb > b
  if raise then b = nb end
  local fm, fk = tonumber(h[1]), tonumber(h[2]) + 1
  if fk >= 65536 then fm, fk = fm + 1, 0 end
  if now > fm then fm, fk = now, 0 end
  local t = fk + n - 1
  local lm, lk = fm + math.floor(t / 65536), t % 65536
  if lm > b then return 'RESERVE', lm end
  return 'OK', {fm = fm, fk = fk, lm = lm, lk = lk, b = b, raise = raise}
end

-- Applies a plan of ccheck.
local function capply(hash, p)
  if p.raise then
    redis.call('HSET', hash, 'm', d(p.lm), 'k', d(p.lk), 'b', d(p.b))
  else
    redis.call('HSET', hash, 'm', d(p.lm), 'k', d(p.lk))
  end
end

-- KEYS: hash. ARGV: n, now_ms, bound_ms (raise the bound to it; 0: no
-- change). -> {'OK', first_ms, first_counter, last_ms, last_counter} |
-- {'INIT'} | {'RESERVE', last_ms}
local function calloc(keys, args)
  local s, p = ccheck(keys[1], tonumber(args[1]), tonumber(args[2]), tonumber(args[3]))
  if s == 'INIT' then return {'INIT'} end
  if s == 'RESERVE' then return {'RESERVE', p} end
  capply(keys[1], p)
  return {'OK', p.fm, p.fk, p.lm, p.lk}
end

-- The whole allocation of one batch in one atomic call: every channel's
-- message ids and every user's seqs, or nothing. No other allocation can
-- land between the channels' and the users' parts, so for two messages of
-- one channel every member's seq order is their message_id order. Only on
-- one Redis (the keys span slots; Redis Cluster refuses the call).
--
-- KEYS: nc channel hashes, then per user its hash and pending set.
-- ARGV: nc, nu, now_ms, ttl_ms, instance, then per channel n, bound_ms,
-- then per user n, bound (bounds: raise to it; 0: no change).
-- -> {'OK', per channel first_ms, first_counter, last_ms, last_counter,
--     then per user epoch, first, last}
--  | {'NEED', per channel then per user: status, value}: status 'OK'
--    (value 0), 'INIT' (0) or 'RESERVE' (as calloc and ualloc); nothing
--    was changed.
local function balloc(keys, args)
  local nc, nu, now = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local ttl = tonumber(args[4])
  local plans, need = {}, false
  local st = {'NEED'}
  for i = 1, nc do
    local s, p = ccheck(keys[i], tonumber(args[4 + 2 * i]), now, tonumber(args[5 + 2 * i]))
    if s == 'OK' then
      plans[i] = p
      push(st, 'OK', 0)
    else
      need = true
      push(st, s, p or 0)
    end
  end
  local base = 5 + 2 * nc
  for j = 1, nu do
    local s, p = ucheck(keys[nc + 2 * j - 1], tonumber(args[base + 2 * j - 1]), tonumber(args[base + 2 * j]))
    if s == 'OK' then
      plans[nc + j] = p
      push(st, 'OK', 0)
    else
      need = true
      push(st, s, p or 0)
    end
  end
  if need then return st end
  local out = {'OK'}
  for i = 1, nc do
    local p = plans[i]
    capply(keys[i], p)
    push(out, p.fm, p.fk, p.lm, p.lk)
  end
  local tnow = nowms()
  for j = 1, nu do
    push(out, uapply(keys[nc + 2 * j - 1], keys[nc + 2 * j], plans[nc + j], ttl, tnow, args[5]))
  end
  return out
end

-- KEYS: claims. ARGV: value, ttl_ms, then dead instances. SET NX PX of
-- every key (one call for a batch's claims on one Redis); a key held by a
-- dead instance (value "<instance>:<n>") is taken over. -> per key 1
-- (won) | 2 (taken over from a dead instance) | 0 (held by another)
local function cclaim(keys, args)
  local dead = deadset(args, 3)
  local out = {}
  for i = 1, #keys do
    if redis.call('SET', keys[i], args[1], 'NX', 'PX', args[2]) then
      out[i] = 1
    else
      out[i] = 0
      if dead then
        local v = redis.call('GET', keys[i])
        if v and dead[string.match(v, '^(.*):[^:]*$') or ''] then
          redis.call('SET', keys[i], args[1], 'PX', args[2])
          out[i] = 2
        end
      end
    end
  end
  return out
end

-- KEYS: instances. ARGV: instance, lease_ms, forget_ms. Renews the
-- instance's lease (score = Redis time) and forgets instances silent for
-- forget_ms. An instance silent for more than lease_ms is dead: the other
-- servers drop its pending entries and take over its claims, so it must
-- not renew under the same name. -> {'OK', dead instances...} |
-- {'FENCED'} (this instance was silent too long: start a new one)
local function lrenew(keys, args)
  local now = nowms()
  local lease = tonumber(args[2])
  local last = redis.call('ZSCORE', keys[1], args[1])
  if last and tonumber(last) < now - lease then return {'FENCED'} end
  redis.call('ZADD', keys[1], d(now), args[1])
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', '(' .. d(now - tonumber(args[3])))
  local out = {'OK'}
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', keys[1], '-inf', '(' .. d(now - lease))) do
    out[#out + 1] = m
  end
  return out
end

-- KEYS: claim. ARGV: value. Deletes the claim if it still holds value
-- (it is this claimer's). -> 1 deleted | 0
local function crelease(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('DEL', keys[1])
  end
  return 0
end

-- KEYS: hash. ARGV: ms, counter, bound_ms. Sets up the hash unless it is
-- valid already; never lowers the last id. -> 'OK'
local function cinit(keys, args)
  local h = redis.call('HMGET', keys[1], 'm', 'k', 'r')
  if h[3] == me() then return 'OK' end
  local m, k, b = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  if h[1] then
    local om, ok = tonumber(h[1]), tonumber(h[2])
    if om > m or (om == m and ok > k) then m, k = om, ok end
  end
  if m > b then b = m end
  redis.call('HSET', keys[1], 'm', d(m), 'k', d(k), 'b', d(b), 'r', me())
  return 'OK'
end

redis.register_function('chatd_seq_v3_ualloc', ualloc)
redis.register_function('chatd_seq_v3_ucommit', ucommit)
redis.register_function('chatd_seq_v3_uabort', uabort)
redis.register_function('chatd_seq_v3_uhorizon', uhorizon)
redis.register_function('chatd_seq_v3_uinit', uinit)
redis.register_function('chatd_seq_v3_calloc', calloc)
redis.register_function('chatd_seq_v3_cinit', cinit)
redis.register_function('chatd_seq_v3_balloc', balloc)
redis.register_function('chatd_seq_v3_cclaim', cclaim)
redis.register_function('chatd_seq_v3_crelease', crelease)
redis.register_function('chatd_seq_v3_lrenew', lrenew)
`
