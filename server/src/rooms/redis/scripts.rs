//! The Lua scripts that keep a room in Redis, one atomic step each, so two
//! nodes acting at once can never hand out one place twice, admit one
//! ticket twice, or shuffle the pre-queue twice. Text only: calling them
//! and reading their answers is `link.rs`'s business.
//!
//! Every script gets the room's keys in the order of [`keys`], and opens the
//! room first if `opens_at` has passed (whichever script runs first after
//! the opening shuffles; the others find it opened). Time is Redis's
//! (`TIME`), so nodes whose clocks disagree still agree on the rate.
//!
//! Layout (`P` = `surge:room:{NAME}:`, the hash tag keeps a room on one
//! Redis Cluster slot):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P c` | hash | epoch, settings, `opened`, `pre_n` (arrivals before the opening), `next_place`, `admitted_total`, the admission `credit` and `last_ms`, the shuffle `seed` |
//! | `P p` | zset | before the opening: arrival serials still in the pre-queue, scored by join time (ms) |
//! | `P m` | hash | after the opening: arrival serial -> place (the shuffle) |
//! | `P l` | zset | the line: places still waiting, scored by place |
//! | `P g` | zset | places lost (away past the grace period) above the front of the line: what a node needs to count positions without one round trip per person |
//! | `P h` | hash | entry id -> tag of the connection holding it (so a late "gone" from a connection that was replaced is ignored) |
//! | `P a` | zset | entry id -> when its holder went away (ms) |
//! | `P j` | hash | place -> join time (s), for the wait-time histogram |
//! | `P o` | zset | outstanding admissions: place scored by expiry (ms) |
//! | `P d` | hash | place -> `SEQ EXPIRES` of an outstanding admission (to hand it again) |
//! | `P L` | list | the admission log, `PLACE SEQ EXPIRES AT_S WAITED_S`, the newest `LOG_KEEP` |
//! | `P x` | string | a deleted room's reason (a day), so joins hear "closed" |
//! | `surge:rooms` | set | names of the rooms, for every node's ticker |
//!
//! An entry's id is `p` and its arrival serial before the opening, its
//! place after.

/// The admissions kept in the log: a node that falls further behind than
/// this (it was cut off from Redis for minutes at a high rate) skips the
/// rest and says so; its waiting browsers then learn of their admission
/// when they rejoin.
pub const LOG_KEEP: u64 = 200_000;

/// Names of a room's keys, in the order every script expects them.
pub fn keys(room: &str) -> Vec<String> {
    let p = format!("surge:room:{{{room}}}:");
    ["c", "p", "m", "l", "g", "h", "a", "j", "o", "d", "L", "x"]
        .iter()
        .map(|k| format!("{p}{k}"))
        .chain(std::iter::once(ROOMS_SET.to_string()))
        .collect()
}

/// The set of room names every node ticks.
pub const ROOMS_SET: &str = "surge:rooms";

/// Shared by every script: the keys, the time, and the opening.
const PRELUDE: &str = r#"
local C, PRE, PERM, LINE, GONE, HOLD, AWAY, JOINED, OUT, ADM, LOG, CLOSED, ROOMS = unpack(KEYS)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = math.floor(now / 1000)

-- Opens the room if it is due: the pre-queue is shuffled (Fisher-Yates
-- driven by a Park-Miller generator from the room's secret seed; exact in
-- Lua's doubles) into places 0..n-1, ahead of everyone who joins later.
local function open_if_due()
  local c = redis.call('HMGET', C, 'opened', 'opens_at', 'pre_n', 'seed')
  if c[1] == '1' then return true end
  if c[2] and c[2] ~= '' and now < tonumber(c[2]) * 1000 then return false end
  local n = tonumber(c[3] or '0')
  local x = tonumber(c[4] or '1')
  local order = {}
  for i = 1, n do order[i] = i - 1 end
  for i = n, 2, -1 do
    x = (x * 48271) % 2147483647
    local j = (x % i) + 1
    order[i], order[j] = order[j], order[i]
  end
  for place = 0, n - 1 do
    local serial = order[place + 1]
    local id = 'p' .. serial
    redis.call('HSET', PERM, serial, place)
    local joined = redis.call('ZSCORE', PRE, serial)
    if joined then
      redis.call('ZADD', LINE, place, place)
      redis.call('HSET', JOINED, place, math.floor(tonumber(joined) / 1000))
      local tag = redis.call('HGET', HOLD, id)
      if tag then redis.call('HSET', HOLD, place, tag) end
      local gone = redis.call('ZSCORE', AWAY, id)
      if gone then redis.call('ZADD', AWAY, gone, place) end
    else
      redis.call('ZADD', GONE, place, place)
    end
    redis.call('HDEL', HOLD, id)
    redis.call('ZREM', AWAY, id)
  end
  redis.call('DEL', PRE)
  redis.call('HSET', C, 'opened', '1', 'next_place', n, 'last_ms', now, 'credit', 0)
  return true
end

-- The id an entry is kept under, from a ticket's kind and number.
local function resolve(kind, n, opened)
  if kind == 'p' then
    if not opened then return 'p' .. n end
    return redis.call('HGET', PERM, n)
  end
  return n
end
"#;

/// `PUT`: creates the room or updates it. ARGV: admit_per_minute,
/// opens_at (or ''), max_admitted (or ''), admission_ttl, a fresh epoch
/// (hex), a fresh seed, the most rooms, the room's name, the most credit
/// kept while idle. Answers `{'created'|'updated'}` or `{'too_many'}`.
const PUT_BODY: &str = r#"
local created = redis.call('EXISTS', C) == 0
if created then
  if redis.call('SCARD', ROOMS) >= tonumber(ARGV[7]) then return {'too_many'} end
  redis.call('DEL', PRE, PERM, LINE, GONE, HOLD, AWAY, JOINED, OUT, ADM, LOG, CLOSED)
  redis.call('HSET', C, 'epoch', ARGV[5], 'seed', ARGV[6], 'opened', '0', 'pre_n', 0,
    'next_place', 0, 'admitted_total', 0, 'credit', 0, 'last_ms', now, 'opens_at', ARGV[2])
  redis.call('SADD', ROOMS, ARGV[8])
elseif redis.call('HGET', C, 'opened') ~= '1' then
  redis.call('HSET', C, 'opens_at', ARGV[2])
end
redis.call('HSET', C, 'apm', ARGV[1], 'max', ARGV[3], 'ttl', ARGV[4])
local credit = tonumber(redis.call('HGET', C, 'credit') or '0')
redis.call('HSET', C, 'credit', math.min(credit, tonumber(ARGV[9])))
open_if_due()
if created then return {'created'} end
return {'updated'}
"#;

/// `GET`: `{epoch, opened, apm, opens_at, max, ttl, total, waiting,
/// outstanding}` or `{}` for no room.
const VIEW_BODY: &str = r#"
local c = redis.call('HMGET', C, 'epoch', 'apm', 'opens_at', 'max', 'ttl', 'admitted_total')
if not c[1] then return {} end
local opened = open_if_due()
local waiting
if opened then waiting = redis.call('ZCARD', LINE) else waiting = redis.call('ZCARD', PRE) end
return {c[1], opened and '1' or '0', c[2], c[3] or '', c[4] or '', c[5], c[6],
  waiting, redis.call('ZCOUNT', OUT, '(' .. now, '+inf')}
"#;

/// `DELETE`: ARGV: the reason, the room's name, seconds the reason is
/// kept. Answers `{'closed'}` or `{'unknown'}`.
const CLOSE_BODY: &str = r#"
if redis.call('EXISTS', C) == 0 then return {'unknown'} end
redis.call('DEL', C, PRE, PERM, LINE, GONE, HOLD, AWAY, JOINED, OUT, ADM, LOG)
redis.call('SET', CLOSED, ARGV[1], 'EX', ARGV[3])
redis.call('SREM', ROOMS, ARGV[2])
return {'closed'}
"#;

/// A browser's join. ARGV: the ticket's epoch ('' without a ticket), its
/// kind ('' without), its number, the holder's tag. Answers
/// `{'unknown'}`, `{'closed', reason}`, `{'other'}`, `{'malformed'}`,
/// `{'expired'}`, or `{kind, epoch, admitted_total, apm, opens_at, a, b, c}`
/// with kind `pre` (a = serial), `line` (a = place, b = position) or
/// `admitted` (a = place, b = seq, c = expires).
const JOIN_BODY: &str = r#"
local c = redis.call('HMGET', C, 'epoch', 'admitted_total', 'apm', 'opens_at')
if not c[1] then
  local why = redis.call('GET', CLOSED)
  if why then return {'closed', why} end
  return {'unknown'}
end
local opened = open_if_due()
local function answer(kind, a, b, x)
  return {kind, c[1], c[2], c[3], c[4] or '', a, b or '', x or ''}
end
local want_epoch, kind, n, tag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if kind == '' then
  if not opened then
    local serial = redis.call('HINCRBY', C, 'pre_n', 1) - 1
    redis.call('ZADD', PRE, now, serial)
    redis.call('HSET', HOLD, 'p' .. serial, tag)
    return answer('pre', serial)
  end
  local place = redis.call('HINCRBY', C, 'next_place', 1) - 1
  redis.call('ZADD', LINE, place, place)
  redis.call('HSET', JOINED, place, now_s)
  redis.call('HSET', HOLD, place, tag)
  return answer('line', place, redis.call('ZCARD', LINE))
end
if want_epoch ~= c[1] then return {'other'} end
if kind == 'p' and not opened then
  if tonumber(n) >= tonumber(redis.call('HGET', C, 'pre_n') or '0') then return {'malformed'} end
  if not redis.call('ZSCORE', PRE, n) then return {'expired'} end
  redis.call('HSET', HOLD, 'p' .. n, tag)
  redis.call('ZREM', AWAY, 'p' .. n)
  return answer('pre', n)
end
local place = resolve(kind, n, opened)
if not place then return {'malformed'} end
if tonumber(place) >= tonumber(redis.call('HGET', C, 'next_place') or '0') then return {'malformed'} end
local rank = redis.call('ZRANK', LINE, place)
if rank then
  redis.call('HSET', HOLD, place, tag)
  redis.call('ZREM', AWAY, place)
  return answer('line', place, rank + 1)
end
local adm = redis.call('HGET', ADM, place)
if adm then
  local seq, expires = string.match(adm, '(%d+) (%d+)')
  if tonumber(expires) * 1000 > now then return answer('admitted', place, seq, expires) end
end
return {'expired'}
"#;

/// A holder's connection went away. ARGV: kind, number, tag. Recorded only
/// if that connection still holds the entry.
const LEAVE_BODY: &str = r#"
if redis.call('EXISTS', C) == 0 then return 0 end
local opened = redis.call('HGET', C, 'opened') == '1'
local id = resolve(ARGV[1], ARGV[2], opened)
if id and redis.call('HGET', HOLD, id) == ARGV[3] then
  redis.call('ZADD', AWAY, now, id)
  return 1
end
return 0
"#;

/// Time passes for a room, from any node. ARGV: admissions this node has
/// seen (-1: none yet, start from now), grace in ms, '1' for the gone list
/// (position counting), the most admissions (and log entries) per call,
/// the most credit kept while idle, the log's length, then arrival serials
/// to map to places. Answers `{'gone',
/// reason}` for a deleted room, else `{'ok', epoch, opened, apm, opens_at,
/// max, ttl, total, waiting, outstanding, front place or '', next_place,
/// seq before the first log entry returned, {log entries}, {places of the
/// serials}, {gone places}}`.
const TICK_BODY: &str = r#"
local c = redis.call('HMGET', C, 'epoch', 'apm', 'opens_at', 'max', 'ttl', 'credit', 'last_ms', 'admitted_total')
if not c[1] then
  return {'gone', redis.call('GET', CLOSED) or ''}
end
local apm, max, ttl = tonumber(c[2] or '0'), c[4] or '', tonumber(c[5] or '600')
local cap, idle = tonumber(ARGV[4]), tonumber(ARGV[5])
local opened = open_if_due()
local total = tonumber(c[8] or '0')

local expired = redis.call('ZRANGEBYSCORE', OUT, '-inf', now, 'LIMIT', 0, cap)
for _, p in ipairs(expired) do
  redis.call('ZREM', OUT, p)
  redis.call('HDEL', ADM, p)
end
local lost = redis.call('ZRANGEBYSCORE', AWAY, '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, cap)
for _, id in ipairs(lost) do
  redis.call('ZREM', AWAY, id)
  redis.call('HDEL', HOLD, id)
  if string.sub(id, 1, 1) == 'p' then
    redis.call('ZREM', PRE, string.sub(id, 2))
  elseif redis.call('ZREM', LINE, id) == 1 then
    redis.call('ZADD', GONE, id, id)
    redis.call('HDEL', JOINED, id)
  end
end

if opened then
  local credit = tonumber(c[6] or '0')
  local last = tonumber(c[7] or now)
  -- A gap of more than a second means nobody could tick (Redis or every
  -- node was down): what was not admitted then is not made up in a burst.
  if now > last then credit = credit + apm * math.min(now - last, 1000) / 60000 end
  local outstanding = redis.call('ZCARD', OUT)
  local made = 0
  while credit >= 1 and made < cap do
    if max ~= '' and outstanding >= tonumber(max) then
      credit = math.min(credit, idle)
      break
    end
    local front = redis.call('ZPOPMIN', LINE)
    if #front == 0 then
      credit = math.min(credit, idle)
      break
    end
    local place = front[1]
    credit = credit - 1
    total = total + 1
    made = made + 1
    outstanding = outstanding + 1
    local expires = now_s + ttl
    local joined = tonumber(redis.call('HGET', JOINED, place) or now_s)
    redis.call('HDEL', JOINED, place)
    redis.call('HDEL', HOLD, place)
    redis.call('ZREM', AWAY, place)
    redis.call('ZADD', OUT, expires * 1000, place)
    redis.call('HSET', ADM, place, total .. ' ' .. expires)
    redis.call('RPUSH', LOG, place .. ' ' .. total .. ' ' .. expires .. ' ' .. now_s .. ' ' .. math.max(now_s - joined, 0))
  end
  redis.call('HSET', C, 'credit', credit, 'last_ms', now, 'admitted_total', total)
  if made > 0 then redis.call('LTRIM', LOG, -tonumber(ARGV[6]), -1) end
end

local next_place = tonumber(redis.call('HGET', C, 'next_place') or '0')
local front = redis.call('ZRANGE', LINE, 0, 0)[1]
redis.call('ZREMRANGEBYSCORE', GONE, '-inf', '(' .. (front or next_place))

local seen = tonumber(ARGV[1])
if seen < 0 then seen = total end
local len = redis.call('LLEN', LOG)
local first = total - len
local from = math.max(seen - first, 0)
local entries = {}
if from < len then entries = redis.call('LRANGE', LOG, from, from + cap - 1) end

local mapped = {}
if opened and #ARGV > 6 then
  mapped = redis.call('HMGET', PERM, unpack(ARGV, 7))
  for i = 1, #mapped do mapped[i] = mapped[i] or '' end
end
local gone = {}
if opened and ARGV[3] == '1' then gone = redis.call('ZRANGE', GONE, 0, -1) end
local waiting
if opened then waiting = redis.call('ZCARD', LINE) else waiting = redis.call('ZCARD', PRE) end
return {'ok', c[1], opened and '1' or '0', c[2], c[3] or '', max, c[5], total, waiting,
  redis.call('ZCARD', OUT), front or '', next_place, first + from, entries, mapped, gone}
"#;

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

/// Every script, loaded once per node.
pub struct Scripts {
    pub put: redis::Script,
    pub view: redis::Script,
    pub close: redis::Script,
    pub join: redis::Script,
    pub leave: redis::Script,
    pub tick: redis::Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            put: script(PUT_BODY),
            view: script(VIEW_BODY),
            close: script(CLOSE_BODY),
            join: script(JOIN_BODY),
            leave: script(LEAVE_BODY),
            tick: script(TICK_BODY),
        }
    }
}
