-- The scheduler: many downloads over one engine Session, each a coroutine. The engine moves the
-- bytes; this layer decides what happens between attempts: retries with exponential backoff and
-- jitter, Retry-After, the next alternative URL, progress ticks, Ctrl-C.
local core = require "modelget.core"
local util = require "modelget.util"

local download = {}

local Scheduler = {}
Scheduler.__index = Scheduler

local TICK = 0.25 -- seconds between progress events
-- From this many paths to make durable at one barrier of a batch (the paths of one model's many
-- files, or of many models), one syncfs per file system makes them durable, rather than an fsync of
-- each: each fsync waits for the disk on its own (on this project's test machine 0.2 ms for a file of
-- 100 KB, against 0.7 ms for a syncfs of eight).
local SYNCFS_MIN = 8
-- Batches with a barrier running at once: while one waits for the disk, the next gathers and syncs.
local BATCHES = 2
local LONG_WAIT = 30 -- seconds of Retry-After beyond which an alternative URL is tried instead

-- Split downloads -------------------------------------------------------------------------------
-- A big file from a server that serves ranges is fetched over `connections` connections at once:
-- each segment a ranged transfer written in place into the one partial file (the engine's shared
-- ranges), asked for with If-Range on the version a HEAD found. The plan (<partial>.split: URL,
-- validator, size, and each range with what of it is on disk) is saved as the segments go, so a
-- pull killed part-way resumes every segment. When all are in, one file-system job hashes the
-- file: the one read-back a split costs (SHA-256 cannot be computed in pieces).
local SPLIT_MIN = 1024 * 1024 -- the smallest segment worth a connection of its own
local SPLIT_SAVE_EVERY = 1    -- seconds between saves of a plan while its segments download

local function remove_split(spec) os.remove(spec.partial .. ".split") end

-- Saves a split's plan whole (temp + rename). Like the engine's own checkpoints it is not fsynced:
-- it only claims bytes the engine reported on disk, and the final hash checks the whole file.
local function save_split(split)
  local tmp = split.path .. ".tmp"
  local f = io.open(tmp, "wb")
  if not f then return end
  local ok = f:write(util.json_encode(split.plan))
  if f:close() and ok then os.rename(tmp, split.path) else os.remove(tmp) end
  split.saved_at = core.now()
end

-- Bounds of jobs (models at once) and connections (per file); a session runs at most SESSION_MAX
-- transfers at once, and the others wait their turn.
download.JOBS_MAX, download.CONNECTIONS_MAX, download.SESSION_MAX = 256, 16, 1024
download.TIMEOUT_MAX = 7 * 24 * 3600 -- the engine's most, in seconds, for a stall or a connect timeout

local function bounded(opts, name, max, default)
  local v = opts[name]
  if v == nil then return default end
  if math.type(v) == nil or math.tointeger(v) == nil or v < 1 or v > max then
    error(string.format("%s: expected a whole number from 1 to %d, got %s", name, max, tostring(v)), 3)
  end
  return math.tointeger(v)
end

function download.scheduler(opts)
  opts = opts or {}
  local jobs = bounded(opts, "jobs", download.JOBS_MAX, 4)
  local connections = bounded(opts, "connections", download.CONNECTIONS_MAX, 1)
  local rate = 0
  if opts.limit_rate then
    rate = util.parse_size(opts.limit_rate)
    if not rate then error("limit_rate: not a rate: " .. tostring(opts.limit_rate), 2) end
  end
  -- A download split over several connections takes a transfer place per connection.
  local session = core.session {
    jobs = math.min(download.SESSION_MAX, jobs * connections), limit_rate = rate, cacert = opts.cacert,
    user_agent = "modelget/0.1", connect_timeout = opts.connect_timeout or 30,
  }
  return setmetatable({
    session = session, opts = opts,
    waiting = {},   -- Transfer -> {co=, info=}
    sleepers = {},  -- {at=, co=}
    ready = {},     -- coroutines to resume at the next turn (a finished group)
    jobs = {},      -- {job=, reqs={…}, synced=}: file-system jobs on worker threads, request k in group k
    fs_queue = {},  -- {ops=, co=, barrier=}: requests for the next batch of file-system steps
    batching = 0,   -- batches with a barrier running
    places = opts.jobs or 4, -- files that may download at once when files are split (see fetch)
    place_waiters = {}, -- coroutines waiting for one of those places
    paused = {},    -- model id -> true: its transfers start paused
    cancelled = {}, -- model id -> true: its fetches stop
    pulling = {},   -- model id -> pulls of it running (the facade's): a cancel lasts while one does
    live = {},      -- the tasks not ended (closed with the scheduler: their locks and files go)
    tasks = 0,
    emit = opts.emit or function() end,
  }, Scheduler)
end

-- Runs fn(...) as a task; it may call the yielding methods below.
function Scheduler:spawn(fn, ...)
  if not self.session then error("the scheduler is closed", 2) end
  local co = coroutine.create(fn)
  self.tasks = self.tasks + 1
  self.live[co] = true
  self:wake(co, ...)
  return co
end

-- Suspends the running task until the scheduler wakes it (every wait below goes through here).
function Scheduler:park()
  local co = coroutine.running()
  if not self.live[co] then error("this waits for the scheduler: call it from a task (sched:spawn)", 3) end
  self.parked = co
  return coroutine.yield()
end

-- A task that ends, or fails, is closed: what it holds to be closed (a model's lock) is let go.
local function ended(self, co)
  self.tasks = self.tasks - 1
  self.live[co] = nil
  coroutine.close(co)
end

function Scheduler:wake(co, ...)
  self.parked = nil
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    local trace = debug.traceback(co, err)
    ended(self, co)
    error(trace, 0)
  end
  if coroutine.status(co) == "dead" then
    ended(self, co)
    if self.on_task_end then self.on_task_end(co) end
  elseif self.parked ~= co then
    -- Suspended by a yield of its own (a callback, on_event say, that yields): nothing would wake it.
    ended(self, co)
    error("a task yielded outside the scheduler's waits (callbacks such as on_event must not yield)", 0)
  end
end

function Scheduler:interrupted() return self.was_interrupted or core.interrupted() end

-- Yields until the seconds pass (or Ctrl-C, or a cancel of id when given).
function Scheduler:sleep(seconds, id)
  self.sleepers[#self.sleepers + 1] = { at = core.now() + seconds, co = coroutine.running(), id = id }
  self:park()
end

-- Runs every function in fns as its own task and yields until all have finished; returns their
-- first results in order.
function Scheduler:all(fns)
  local me = coroutine.running()
  local results, left = {}, #fns
  if left == 0 then return results end
  if left == 1 then return { table.pack(fns[1]()) } end -- no other task to run alongside
  for i, fn in ipairs(fns) do
    self:spawn(function()
      results[i] = table.pack(fn())
      left = left - 1
      if left == 0 then self.ready[#self.ready + 1] = me end
    end)
  end
  self:park()
  return results
end

-- Whether a request's steps hold a barrier.
local function has_barrier(ops)
  for _, op in ipairs(ops) do
    if op[1] == "barrier" then return true end
  end
  return false
end

-- One job's steps for requests {ops=}…, request k's steps in group k: phase by phase, the requests'
-- steps up to their next barrier, then the barrier for all of them (one syncfs of the file systems
-- they list when they list SYNCFS_MIN paths or more, else an fsync of each path listed: a path listed
-- by several requests is synced once, for all). The requests' step tables are used as they are. Also the way store.install's steps run
-- outside a scheduler, as a job of one request.
function download.job_steps(reqs)
  local steps, cursor, left = {}, {}, #reqs
  for k = 1, #reqs do cursor[k] = 1 end
  while left > 0 do
    local paths, owner = {}, {} -- owner: path -> its one request, or false when several list it
    left = 0
    for k, req in ipairs(reqs) do
      local ops, i = req.ops, cursor[k]
      while ops[i] and ops[i][1] ~= "barrier" do
        ops[i].group = k
        steps[#steps + 1] = ops[i]
        i = i + 1
      end
      local barrier = ops[i]
      if barrier then
        for j = 2, #barrier do
          local path = barrier[j]
          local o = owner[path]
          if o == nil then
            owner[path] = k
            paths[#paths + 1] = path
          elseif o ~= k then
            owner[path] = false
          end
        end
        i = i + 1
      end
      cursor[k] = i
      if ops[i] then left = left + 1 end
    end
    if core.syncfs and #paths >= SYNCFS_MIN then
      -- A syncfs passes over a missing path (a request that failed before making it): each path of
      -- one request is checked first, so that a request whose file is missing fails as an fsync of
      -- it would.
      for _, path in ipairs(paths) do
        if owner[path] then steps[#steps + 1] = { "exists", path, group = owner[path] } end
      end
      table.insert(paths, 1, "syncfs") -- one step, of no request: its failure is every request's
      steps[#steps + 1] = paths
    else
      for _, path in ipairs(paths) do
        -- A path of several requests is missing only if they all failed before it.
        steps[#steps + 1] = { "fsync", path, not owner[path] and "optional" or nil, group = owner[path] or nil }
      end
    end
  end
  return steps
end

-- Runs file-system steps (core.fs_start: make folders, write, rename, remove, fsync, sha256) on a
-- worker thread; yields until they are done, while the other tasks' transfers go on. A step
-- {"barrier", path…} makes everything before it durable (the paths listed, or their whole file
-- system) before the steps after it run. The requests of all tasks made meanwhile run as one job, so
-- many small models installed at once share their syncs. Returns what the job's result says for
-- these steps: true (and a sha256 step's digest), or nil, message, code.
function Scheduler:fs(ops)
  if #ops == 0 then return true end
  local req = { ops = ops, co = coroutine.running(), barrier = has_barrier(ops) }
  for _, op in ipairs(ops) do
    if op[1] == "sha256" then -- a digest is a job's own: not batched
      self:start_job({ req }, false)
      return self:park()
    end
  end
  self.fs_queue[#self.fs_queue + 1] = req
  return self:park()
end

-- Starts one job for requests {ops=, co=}…, each woken with its own outcome when the job ends.
function Scheduler:start_job(reqs, synced)
  if synced then self.batching = self.batching + 1 end
  self.jobs[#self.jobs + 1] = { job = core.fs_start(download.job_steps(reqs)), reqs = reqs, synced = synced }
end

-- Starts the requests that came meanwhile: those with no barrier at once (making a folder waits for
-- no sync), those with one as a batch when fewer than BATCHES such batches run.
function Scheduler:start_batch()
  local plain, synced = {}, {}
  for _, req in ipairs(self.fs_queue) do table.insert(req.barrier and synced or plain, req) end
  self.fs_queue = {}
  if #plain > 0 then self:start_job(plain, false) end
  if #synced == 0 then return end
  if self.batching < BATCHES then self:start_job(synced, true) else self.fs_queue = synced end
end

-- Wakes the tasks of every finished job, each with its request's outcome.
function Scheduler:finish_jobs()
  local done, still = {}, {}
  for _, j in ipairs(self.jobs) do
    if j.job:done() then done[#done + 1] = j else still[#still + 1] = j end
  end
  self.jobs = still
  for _, j in ipairs(done) do
    if j.synced then self.batching = self.batching - 1 end
    local results = {}
    for k in ipairs(j.reqs) do results[k] = table.pack(j.job:result(k)) end
    j.job:close()
    for k, req in ipairs(j.reqs) do self:wake(req.co, table.unpack(results[k], 1, results[k].n)) end
  end
end

-- One transfer attempt: adds it to the session and yields until it finishes.
function Scheduler:transfer(opts, info)
  local t = self.session:add(opts)
  if info and self.paused[info.id] then t:pause() end
  self.waiting[t] = { co = coroutine.running(), info = info }
  self:park()
  local r = t:result()
  t:close()
  return r
end

-- A split file's speed: a moving average of its own bytes over time, not the sum of its segments'
-- (a segment that ends takes its speed with it while the others take a while to show theirs; the
-- file goes on as fast). segments: that sum, the first estimate. Returns bytes/s.
function download.split_speed(split, completed, now, segments)
  if split.rate_at and now > split.rate_at then
    local inst = math.max(0, completed - split.rate_bytes) / (now - split.rate_at)
    split.rate = split.rate and (0.7 * split.rate + 0.3 * inst) or inst
  elseif not split.rate_at then
    split.rate = segments
  end
  split.rate_at, split.rate_bytes = now, completed
  return split.rate
end

-- One progress event per file: the segments of a split download count as one. A paused model's
-- files say so (paused = true), with speed 0 and no eta (the engine's while paused).
function Scheduler:progress_tick()
  local splits = {}
  for t, w in pairs(self.waiting) do
    local info = w.info
    if info and info.id then
      local p = t:progress()
      local paused = p.state == "paused" or nil
      if p.state == "running" or paused or p.completed > 0 then
        local split = info.split
        if not split then
          self.emit { event = "progress", id = info.id, file = info.file, completed = p.completed,
            total = p.total, speed = p.speed, eta = p.eta, paused = paused }
        else
          local g = splits[split]
          if not g then
            g = { id = info.id, file = info.file, completed = split.done, total = split.plan.total, speed = 0 }
            splits[split] = g
          end
          g.paused = g.paused or paused
          g.completed = g.completed + p.completed
          g.speed = g.speed + (p.speed or 0)
          local range = split.plan.ranges[info.index]
          if p.on_disk and p.on_disk > range[3] then range[3] = p.on_disk end
        end
      end
    end
  end
  for split, g in pairs(splits) do
    if g.paused then
      split.rate_at = nil -- its average starts afresh once it goes on (split_speed)
    else
      g.speed = download.split_speed(split, g.completed, core.now(), g.speed)
      g.eta = g.speed > 0 and (g.total - g.completed) / g.speed or nil
    end
    g.event = "progress"
    self.emit(g)
    if core.now() - (split.saved_at or 0) >= SPLIT_SAVE_EVERY then save_split(split) end
  end
end

-- Drives every task to its end. self.on_tick(self), when set, runs at each progress tick and once
-- at the end (the facade's hook: stop requests from other processes).
function Scheduler:run()
  local last_tick = 0
  -- A Ctrl-C this scheduler saw, and that the program has since cleared (core.clear_interrupt).
  if self.was_interrupted and not core.interrupted() then self.was_interrupted = false end
  while self.tasks > 0 do
    if core.interrupted() and not self.was_interrupted then
      self.was_interrupted = true
      for t in pairs(self.waiting) do t:cancel() end
    end
    local now = core.now()
    self:start_batch()
    local timeout = #self.ready > 0 and 0 or TICK
    for _, s in ipairs(self.sleepers) do
      timeout = math.min(timeout, math.max(0, s.at - now))
    end
    -- A finished file-system job ends either wait early.
    if next(self.waiting) then self.session:perform(timeout)
    elseif timeout > 0 and #self.jobs > 0 then core.jobs_wait(timeout)
    elseif timeout > 0 then core.sleep(timeout) end
    for _, t in ipairs(self.session:finished()) do
      local w = self.waiting[t]
      if w then
        self.waiting[t] = nil
        self:wake(w.co)
      end
    end
    now = core.now()
    local due, keep = {}, {}
    for _, s in ipairs(self.sleepers) do
      if s.at <= now or self.was_interrupted then due[#due + 1] = s else keep[#keep + 1] = s end
    end
    self.sleepers = keep
    for _, s in ipairs(due) do self:wake(s.co) end
    local ready = self.ready
    self.ready = {}
    for _, co in ipairs(ready) do self:wake(co) end
    self:finish_jobs()
    if now - last_tick >= TICK then
      last_tick = now
      self:progress_tick()
      if self.on_tick then self.on_tick(self) end
    end
  end
  if self.on_tick then self.on_tick(self) end -- what the last tasks' ends changed is said too
end

-- The download manager's controls, for every transfer of one model id (any task may call them,
-- or an on_progress/on_event callback). Returns how many transfers were touched.
local function each_transfer(self, id, fn)
  local n = 0
  for t, w in pairs(self.waiting) do
    if w.info and w.info.id == id then fn(t); n = n + 1 end
  end
  return n
end

function Scheduler:pause(id)
  self.paused[id] = true
  return each_transfer(self, id, function(t) t:pause() end)
end

function Scheduler:resume(id)
  self.paused[id] = nil
  return each_transfer(self, id, function(t) t:resume() end)
end

-- Stops a model's downloads (partial data kept for a later pull): its pull returns ECANCEL, at once
-- when it waits out a retry's backoff. A later pull of the id starts afresh (see the facade's pull).
function Scheduler:cancel(id)
  self.cancelled[id] = true
  for _, s in ipairs(self.sleepers) do
    if s.id == id then s.at = 0 end
  end
  return each_transfer(self, id, function(t) t:cancel() end)
end

-- Closes the session and every task not ended (a task left waiting when run() failed, say):
-- their locks are let go now, not whenever the garbage collector gets to them.
function Scheduler:close()
  -- File-system jobs still running (an install's renames) end first: a model's lock goes only then.
  for _, j in ipairs(self.jobs) do j.job:close() end
  self.jobs = {}
  if self.session then self.session:close(); self.session = nil end
  for co in pairs(self.live) do
    self.live[co] = nil
    coroutine.close(co)
  end
end

-- Backoff before attempt n+1: exponential from the base, capped, with jitter; Retry-After wins.
local function backoff(base, attempt, retry_after)
  if retry_after then return math.min(retry_after, 600) end
  local delay = math.min(base * 2 ^ (attempt - 1), 60)
  return delay * (0.5 + math.random() * 0.5)
end

local function cancelled(spec)
  local st = spec.partial and core.stat(spec.partial)
  if not (st and st.size > 0) then return util.fail("ECANCEL", "%s: cancelled before any data arrived", spec.id or spec.file) end
  return util.fail("ECANCEL", "%s: cancelled; partial data kept, pull again to resume", spec.id or spec.file)
end

-- Fetches one file through its URLs in order, each tried `retries` times; over several connections
-- when the scheduler has `connections` > 1 and the server allows it (see fetch_split).
-- spec: {id=, file=, urls={…}, partial=path | memory=bytes, head=, size=, space_factor=, space_path=,
--        auth_for=function(url) -> {header=, scheme=, host=, port=}|nil (auth.for_url)}
-- Returns the engine's result table (ok) or nil, message, code.
-- With connections > 1 the session has jobs × connections transfer places; `jobs` files at most
-- download at once all the same (a split file's segments share its place), so many small files are
-- not fetched connections times as many at a time. A file keeps its place through its retries.
function Scheduler:fetch(spec)
  if (self.opts.connections or 1) <= 1 then return self:fetch_file(spec) end
  if self.places > 0 then
    self.places = self.places - 1
  else
    self.place_waiters[#self.place_waiters + 1] = coroutine.running()
    self:park() -- handed a place by a file that ended
  end
  local r, err, code, last = self:fetch_file(spec)
  local next_one = table.remove(self.place_waiters, 1)
  if next_one then self.ready[#self.ready + 1] = next_one else self.places = self.places + 1 end
  return r, err, code, last
end

function Scheduler:fetch_file(spec)
  -- A split download's kept plan is resumed as a split, -x or not: its segments' bytes are reused.
  local kept = spec.partial and not spec.fresh and core.stat(spec.partial .. ".split") ~= nil
  if ((self.opts.connections or 1) > 1 or kept) and spec.partial and not spec.head and not self.cancelled[spec.id] then
    local r, err, code = self:fetch_split(spec)
    if r then return r end
    if err and (code ~= "ENET" or #spec.urls < 2) then return nil, err, code end
    if err then
      -- The split's server failed: on to the alternative URLs, one connection each.
      remove_split(spec)
      self.emit { event = "fallback", id = spec.id, file = spec.file, from = spec.urls[1], to = spec.urls[2],
        reason = err }
      spec = setmetatable({ urls = { table.unpack(spec.urls, 2) } }, { __index = spec })
    end
  end
  local r, err, code, last = self:fetch_whole(spec)
  if r then self:body_complete(spec, r.bytes) end
  return r, err, code, last
end

-- A file's last progress event, said once its body is all in (before its verify): ticks come every
-- TICK, so without it the last one said falls short of the end, and a file that came whole
-- between two ticks says nothing. A body kept in memory (a Hub listing) is no file: not said.
function Scheduler:body_complete(spec, bytes)
  if not (spec.partial and spec.id) then return end
  self.emit { event = "progress", id = spec.id, file = spec.file, completed = bytes, total = bytes, speed = 0, eta = 0 }
end

-- The same, on one connection. A 4th value on failure: the last attempt's engine result.
function Scheduler:fetch_whole(spec)
  local opts = self.opts
  local retries = math.max(1, opts.retries or 5)
  local base = opts.retry_wait or 1
  local tried, last, saw_auth, saw_auth_url, refused, missing = {}, nil, nil, nil, 0, 0
  if self.cancelled[spec.id] then return cancelled(spec) end
  if self:interrupted() then return util.fail("EINTR", "interrupted") end
  -- One connection for the whole file: a split plan beside it would describe other bytes.
  if spec.partial and not spec.shared and not spec.fresh then os.remove(spec.partial .. ".split") end
  for ui, url in ipairs(spec.urls) do
    if ui > 1 then
      -- A file looked for in the places it may be (a repo's tokenizer: the model's folder, then
      -- each above it) is not found in one: no failure, the search going on.
      self.emit { event = "fallback", id = spec.id, file = spec.file, from = spec.urls[ui - 1], to = url,
        reason = last and last.message, searching = spec.searching and last and last.status == 404 or nil }
    end
    for attempt = 1, retries do
      -- A cancel may come while the previous attempt waited out its backoff.
      if self.cancelled[spec.id] then return cancelled(spec) end
      local r = self:transfer({
        url = url, partial = spec.partial, memory = spec.memory, head = spec.head, fsync = spec.fsync,
        writeback = spec.writeback, range = spec.range, whole_size = spec.whole_size, validator = spec.validator,
        shared = spec.shared, done = spec.done,
        auth = spec.auth_for and spec.auth_for(url) or nil,
        stall_timeout = opts.stall_timeout or 30, expected_size = spec.size,
        space_factor = spec.space_factor, space_path = spec.space_path, reservation = spec.reservation,
      }, spec)
      if spec.shared and r.on_disk then
        -- A segment in place: the next attempt (or pull) goes on from what this one left on disk.
        spec.done = math.max(spec.done or 0, r.on_disk)
        spec.split.plan.ranges[spec.index][3] = spec.done
        save_split(spec.split)
      end
      if r.ok then
        r.url = url
        return r
      end
      if self:interrupted() then
        return util.fail("EINTR", "interrupted")
      end
      if self.cancelled[spec.id] then return cancelled(spec) end
      last = r
      if r.code == "EAUTH" then saw_auth, saw_auth_url = r, url end
      if r.code == "EPOLICY" then refused = refused + 1 end
      if r.code == "ESPACE" then return nil, r.message, r.code end
      if not r.retryable or attempt == retries then break end
      -- A server that asks for a long wait (Retry-After) while another URL may serve: that one now.
      if r.retry_after and r.retry_after > LONG_WAIT and ui < #spec.urls then break end
      local delay = backoff(base, attempt, r.retry_after)
      self.emit { event = "retry", id = spec.id, file = spec.file, url = url, attempt = attempt + 1,
        delay = delay, reason = r.message }
      self:sleep(delay, spec.id)
      if self:interrupted() then return util.fail("EINTR", "interrupted") end
    end
    tried[#tried + 1] = string.format("%s (%s)", util.shown_url(url), last and last.message or "?")
    if last and last.status == 404 then missing = missing + 1 end
  end
  -- Every URL refused by the policy (a Hub endpoint on plain http://, say) is the policy's failure.
  if refused == #spec.urls then return nil, last.message, "EPOLICY", last end
  local code = saw_auth and "EAUTH" or "ENET"
  local msg = string.format("download failed: %s: tried %s", spec.file or "?", table.concat(tried, ", "))
  -- Looked for in every place it may be, and in none (404 at each): no download failed.
  if spec.searching and missing == #spec.urls then
    msg = string.format("not in the model's repo: looked for in %d places, its folder and each above it", #spec.urls)
  end
  -- What to do, for the URL that asked for a credential (auth_hint: a string, or a function of that
  -- URL, the status it answered and the URL that answered it: another, past a redirect).
  local hint = spec.auth_hint
  if saw_auth and type(hint) == "function" then hint = hint(saw_auth_url, saw_auth.status, saw_auth.effective_url) end
  if saw_auth and hint then msg = msg .. "; " .. hint end
  return nil, msg, code, last
end

-- The plan for a split of spec's file ({url=, validator=, total=, ranges={{from, to, done}…}}), or
-- nil (then it is fetched on one connection), or nil, message, code (a kept plan could not be checked).
function Scheduler:split_plan(spec)
  local url = spec.urls[1]
  local path = spec.partial .. ".split"
  local text = util.read_file(path)
  if text then
    local plan = util.json_decode(text, path)
    local good = type(plan) == "table" and plan.url == url and type(plan.ranges) == "table" and #plan.ranges >= 2
      and math.tointeger(plan.total)
    -- Bytes the plan says are in must be in its file: a plan left without it (a pull killed once
    -- the file was whole and renamed, before the plan went) vouches for nothing.
    local written = 0
    for _, r in ipairs(good and plan.ranges or {}) do
      local from, to, done = math.tointeger(r[1]), math.tointeger(r[2]), math.tointeger(r[3])
      if not (from and to and done and from <= to and to < plan.total and done >= 0 and done <= to - from + 1) then
        good = false
      elseif done > 0 then
        written = math.max(written, from + done)
      end
    end
    if good and written > 0 and ((core.stat(spec.partial) or {}).size or 0) < written then good = false end
    if good then
      local left = false
      for _, r in ipairs(plan.ranges) do left = left or r[3] < r[2] - r[1] + 1 end
      if left then return plan end -- each segment's If-Range checks the version
      -- Nothing left to ask for. With a SHA-256 to check (stated for the pull, or by the server when
      -- the plan was made) the hash decides, with no request. Else the server says whether the file
      -- is still that version (a HEAD, with the usual retries); one it no longer has goes, partial and
      -- all. Unreachable, the pull fails and the plan stays for the next one.
      if spec.sha256 or util.is_sha256(plan.linked_etag) then return plan end
      local head, herr, hcode = self:fetch_whole { id = spec.id, file = spec.file, urls = { url }, head = true,
                                                   auth_for = spec.auth_for, auth_hint = spec.auth_hint }
      if not head then return nil, herr, hcode end
      local validator = head.etag and head.etag:sub(1, 1) == '"' and head.etag or head.last_modified
      if validator == plan.validator and head.bytes == plan.total then return plan end
      os.remove(spec.partial)
      os.remove(spec.partial .. ".state")
    end
    remove_split(spec)
  end
  if (self.opts.connections or 1) <= 1 then return nil end -- no plan kept, and none to make
  local st = core.stat(spec.partial)
  if st and st.size > 0 then return nil end -- a partial from one connection: that one resumes
  if spec.size and spec.size < 2 * SPLIT_MIN then return nil end -- known to be too small
  local head = self:transfer({ url = url, head = true, auth = spec.auth_for and spec.auth_for(url) or nil,
                               stall_timeout = self.opts.stall_timeout or 30 }, nil)
  if not head.ok or not head.bytes then return nil end
  local ranges_ok = (head.headers or {})["accept-ranges"]
  local validator = head.etag and head.etag:sub(1, 1) == '"' and head.etag or head.last_modified
  local n = math.min(self.opts.connections, head.bytes // SPLIT_MIN)
  if not ranges_ok or not ranges_ok:lower():find("bytes", 1, true) or not validator or n < 2 then return nil end
  local plan = { url = url, validator = validator, total = head.bytes, ranges = {},
                 linked_etag = head.linked_etag, linked_size = head.linked_size }
  local size = -(-head.bytes // n)
  for i = 1, n do
    local from = (i - 1) * size
    if from < head.bytes then plan.ranges[#plan.ranges + 1] = { from, math.min(head.bytes, from + size) - 1, 0 } end
  end
  local split = { plan = plan, path = path }
  save_split(split)
  if not core.stat(path) then return nil end
  return plan
end

-- Returns the result, or nil, message, code (the segments are kept for a resume); or
-- nothing when the file is better fetched whole (no plan, or the server refused a segment: the split
-- is given up).
function Scheduler:fetch_split(spec)
  local plan, perr, pcode = self:split_plan(spec)
  if not plan then
    if perr then return nil, perr, pcode end
    if self:interrupted() then return util.fail("EINTR", "interrupted") end
    return nil
  end
  -- Storage: what is still to come across all the ranges, checked once before any of them starts
  -- (each range alone would look small, and a disk too full for the file would fill part-way).
  local left = 0
  for _, range in ipairs(plan.ranges) do left = left + (range[2] - range[1] + 1 - range[3]) end
  local fits, serr, scode = self.session:check_space { bytes = left, partial = spec.partial,
    space_path = spec.space_path, space_factor = spec.space_factor }
  if not fits then return nil, serr, scode end
  -- Held until the ranges end, so that the other downloads' checks count it meanwhile.
  local reservation = math.type(fits) == "integer" and fits or nil
  local split = { plan = plan, path = spec.partial .. ".split", done = 0 } -- done: finished ranges' bytes
  local jobs = {}
  for i, range in ipairs(plan.ranges) do
    local from, to, done = range[1], range[2], range[3]
    if done >= to - from + 1 then
      split.done = split.done + done -- in already: counted, not asked for again
    else
      local seg = setmetatable({ partial = spec.partial, range = { from, to }, shared = true, done = done,
        whole_size = plan.total, validator = plan.validator, urls = { plan.url }, size = to - from + 1,
        split = split, index = i, space_factor = 1, reservation = reservation }, { __index = spec })
      jobs[#jobs + 1] = function()
        local r, err, code, last = self:fetch_whole(seg)
        if r then split.done = split.done + r.bytes end
        return r, err, code, last
      end
    end
  end
  local done, results = pcall(self.all, self, jobs) -- the space is given back however the ranges end
  if reservation then self.session:release_space(reservation) end
  if not done then error(results, 0) end
  save_split(split)
  -- An interruption or a cancel speaks first: the segments are kept for the next pull.
  for _, res in ipairs(results) do
    if res[1] == nil and (res[3] == "EINTR" or res[3] == "ECANCEL") then return nil, res[2], res[3] end
  end
  for _, res in ipairs(results) do
    local r, err, code, last = table.unpack(res, 1, 4)
    if not r then
      if last and last.range_refused then
        remove_split(spec)
        -- A whole answer to If-Range with another validator, or a range of a file of another size:
        -- the file changed since the plan.
        local changed = (last.etag and last.etag:sub(1, 1) == '"' and last.etag ~= plan.validator) or last.status == 206
        self.emit { event = "fallback", id = spec.id, file = spec.file, from = plan.url, to = plan.url,
          reason = changed and "the file changed on the server since its segments began: all of it again, on one connection"
            or "the server would not serve ranges of it: on one connection" }
        return nil
      end
      return nil, err, code -- the segments are kept: the same pull resumes them
    end
  end
  -- The plan stays (every range done) until the model is installed: a pull killed before that
  -- finds the file whole and only hashes it again. The read-back is said, as it takes a while.
  self:body_complete(spec, plan.total)
  self.emit { event = "hash", id = spec.id, file = spec.file, bytes = plan.total }
  local ok, sha, code = self:fs { { "sha256", spec.partial } }
  if not ok then return nil, sha, code end
  local st = core.stat(spec.partial)
  if not st or st.size ~= plan.total then
    return util.fail("ESIZE", "%s: the segments make %d bytes, not %d", spec.file or "?", st and st.size or 0, plan.total)
  end
  return { ok = true, url = plan.url, bytes = plan.total, sha256 = sha, status = 206, etag = plan.validator,
           linked_etag = plan.linked_etag, linked_size = plan.linked_size, connections = #plan.ranges }
end

-- A small JSON document (Hub API listings), through the same retries and policy: the decoded
-- value and the response's headers, or nil, message, code.
function Scheduler:fetch_json(url, spec)
  local r, err, code = self:fetch {
    id = spec and spec.id, file = url, urls = { url }, memory = 16 * 1024 * 1024,
    auth_for = spec and spec.auth_for, auth_hint = spec and spec.auth_hint,
  }
  if not r then return nil, err, code end
  local doc, derr, dcode = util.json_decode(r.body or "", url)
  if doc == nil then return nil, derr, dcode end
  return doc, r.headers
end

download.Scheduler = Scheduler
return download
