package redis

import goredis "github.com/redis/go-redis/v9"

// A user's record is one hash (KEYS[1], with the user id as hash tag, so
// that the record and its pub/sub channel share a slot):
//
//	n     number of "c:" fields (devices up, per server instance)
//	last  last active time, Unix ms
//	h     hide_presence flag, "0" or "1"
//	ver   version, see presence.NextVersion (Unix µs from Redis TIME)
//	c:<instance>|<device>  "1" for each device up on a server instance
//
// The hash has no expiry while n > 0 and expires LastSeenTTL after the user
// went offline. A change is published on the user's channel as
// "<online 0|1>|<last ms>|<hidden 0|1>|<version>", from inside the script
// so that messages are in the order of the changes.

// luaCommon holds helpers shared by the scripts (Lua numbers are doubles:
// format integers with %.0f, exact below 2^53).
const luaCommon = `
local function num(v) return tonumber(v or '0') or 0 end
local function fmt(v) return string.format('%.0f', v) end
local function bump(k)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local prev = num(redis.call('HGET', k, 'ver'))
  if now <= prev then now = prev + 1 end
  redis.call('HSET', k, 'ver', fmt(now))
  return now
end
local function touch(k, at)
  local last = num(redis.call('HGET', k, 'last'))
  if at > last then
    redis.call('HSET', k, 'last', fmt(at))
    return at
  end
  return last
end
local function publish(k, ch, online, last, ver)
  local h = redis.call('HGET', k, 'h') or '0'
  redis.call('SPUBLISH', ch, online .. '|' .. fmt(last) .. '|' .. h .. '|' .. fmt(ver))
end
`

// upScript: ARGV field, at (ms), hidden ("0"/"1"), channel. Returns 1 if
// the user went online.
var upScript = goredis.NewScript(luaCommon + `
local k = KEYS[1]
redis.call('HSETNX', k, 'h', ARGV[3])
if redis.call('HSETNX', k, ARGV[1], '1') == 0 then return 0 end
local n = redis.call('HINCRBY', k, 'n', 1)
local last = touch(k, tonumber(ARGV[2]))
redis.call('PERSIST', k)
if n ~= 1 then return 0 end
local ver = bump(k)
if redis.call('HGET', k, 'h') ~= '1' then publish(k, ARGV[4], '1', last, ver) end
return 1
`)

// dropScript removes "c:" fields: ARGV mode ("f": the one field ARGV[2];
// "i": every field of instance prefix ARGV[2]; "d": every field whose
// device is ARGV[2]), last active (ms), channel, offline TTL (ms). Returns
// 1 if the user went offline.
var dropScript = goredis.NewScript(luaCommon + `
local k = KEYS[1]
local mode, pat = ARGV[1], ARGV[2]
local removed = 0
if mode == 'f' then
  removed = redis.call('HDEL', k, pat)
else
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if string.sub(f, 1, 2) == 'c:' then
      local hit = false
      if mode == 'i' then
        hit = string.sub(f, 1, #pat) == pat
      else
        local bar = string.find(f, '|', 3, true)
        hit = bar ~= nil and string.sub(f, bar + 1) == pat
      end
      if hit then removed = removed + redis.call('HDEL', k, f) end
    end
  end
end
if removed == 0 then return 0 end
local n = redis.call('HINCRBY', k, 'n', -removed)
local last = touch(k, tonumber(ARGV[3]))
if n > 0 then return 0 end
if n < 0 then redis.call('HSET', k, 'n', '0') end
local ver = bump(k)
redis.call('PEXPIRE', k, ARGV[5])
if redis.call('HGET', k, 'h') ~= '1' then publish(k, ARGV[4], '0', last, ver) end
return 1
`)

// hideScript: ARGV hidden ("0"/"1"), channel, offline TTL (ms). Publishes
// the user's state with the new flag.
var hideScript = goredis.NewScript(luaCommon + `
local k = KEYS[1]
redis.call('HSET', k, 'h', ARGV[1])
local n = num(redis.call('HGET', k, 'n'))
if n > 0 then redis.call('PERSIST', k) else redis.call('PEXPIRE', k, ARGV[3]) end
local ver = bump(k)
local online = '0'
if n > 0 then online = '1' end
publish(k, ARGV[2], online, num(redis.call('HGET', k, 'last')), ver)
return 1
`)

var scripts = []*goredis.Script{upScript, dropScript, hideScript}
