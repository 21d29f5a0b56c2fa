-- The engine's file-system helpers, as the store uses them.
local t = require "t"
local core = require "modelget.core"

test("fsync steps make files and folders durable off the caller's thread, and name a failure", function()
  local dir = t.tmpdir("sync")
  t.write(dir .. "/a/b.bin", "data")
  local job = core.fs_start { { "fsync", dir .. "/a/b.bin" }, { "fsync", dir .. "/a" }, { "fsync", dir } }
  for _ = 1, 500 do
    if job:done() then break end
    core.sleep(0.01)
  end
  t.eq(job:done(), true, "done")
  t.eq(job:result(), true, "result")
  job:close()
  local bad = core.fs_start { { "fsync", dir .. "/a/b.bin" }, { "fsync", dir .. "/missing" } }
  local ok, err, code = bad:result() -- waits
  t.eq(ok, nil, "a missing path fails the job")
  t.eq(code, "ENOENT", "code")
  t.match(err, "cannot sync .*/missing", "names the path")
  t.ok(not pcall(core.fs_start, { { "fsync", 1 } }), "a non-string path is misuse")
end)

test("file-system jobs run their steps in order off the caller's thread; the first failure stops them, named", function()
  local dir = t.tmpdir("fsjob")
  local job = core.fs_start {
    { "mkdirs", dir .. "/a/b" }, { "write", dir .. "/a/b/x", "hello", "sync" }, { "rename", dir .. "/a/b/x", dir .. "/a/y" },
    { "remove", dir .. "/absent", "optional" }, { "rename", dir .. "/absent", dir .. "/z", "optional" },
    { "fsync", dir .. "/a/y" }, { "fsync", dir .. "/a" },
  }
  t.eq(job:result(), true, "result")
  t.eq(job:done(), true, "done")
  job:close()
  t.eq(t.read(dir .. "/a/y"), "hello", "written, then renamed")
  local hashed = core.fs_start { { "sha256", dir .. "/a/y" } }
  local hok, hex = hashed:result()
  t.eq(hok, true, "a sha256 step")
  t.eq(hex, t.sha256("hello"), "its digest is the result's second value")
  hashed:close()
  t.ok(not t.exists(dir .. "/a/b/x"), "the old name is gone")
  local bad = core.fs_start { { "write", dir .. "/first", "1" }, { "rename", dir .. "/missing", dir .. "/z" },
                              { "write", dir .. "/never", "2" } }
  local ok, err, code, at = bad:result()
  t.eq(ok, nil, "a missing source fails")
  t.eq(code, "ENOENT", "code")
  t.eq(at, 2, "the failed step")
  t.eq(err, "cannot rename " .. dir .. "/missing to " .. dir .. "/z: No such file or directory", "message")
  t.eq(t.read(dir .. "/first"), "1", "the steps before it ran")
  t.ok(not t.exists(dir .. "/never"), "the steps after it did not")
  t.eq(core.fs_start({ { "fsync", dir .. "/absent", "optional" } }):result(), true, "an optional fsync of a missing path")
  local _, rerr = core.fs_start({ { "remove", dir .. "/absent" } }):result()
  t.match(rerr, "^cannot remove .*/absent: No such file", "a remove that is not optional fails")
  -- Many at once (more than the pool's workers), each waited for.
  local jobs = {}
  for i = 1, 40 do jobs[i] = core.fs_start { { "write", dir .. "/f" .. i, ("x"):rep(i) }, { "fsync", dir .. "/f" .. i } } end
  for i = 1, 40 do t.eq(jobs[i]:result(), true, "job " .. i); jobs[i]:close() end
  for i = 1, 40 do t.eq(#t.read(dir .. "/f" .. i), i, "file " .. i) end
  t.ok(not pcall(core.fs_start, { { "frob", "x" } }), "an unknown step is misuse")
  t.ok(not pcall(core.fs_start, { { "rename", "x" } }), "a rename without a target is misuse")
  t.ok(not pcall(core.fs_start, { "x" }), "a step that is not a table is misuse")
  local closed = core.fs_start { { "fsync", dir } }
  closed:close()
  closed:close()
  local ok2, why = pcall(closed.result, closed)
  t.ok(not ok2 and why:find("closed file%-system job"), "a closed job raises when used")
end)

test("grouped steps: a failed request skips only its own later steps; a step of no group fails them all", function()
  local dir = t.tmpdir("groups")
  local job = core.fs_start {
    { "write", dir .. "/a1", "a", group = 1 }, { "rename", dir .. "/missing", dir .. "/b1", group = 2 },
    { "write", dir .. "/c1", "c", group = 3 },
    { "fsync", dir .. "/a1", group = 1 }, { "write", dir .. "/b2", "never", group = 2 }, { "fsync", dir },
    { "rename", dir .. "/a1", dir .. "/a2", group = 1 }, { "rename", dir .. "/c1", dir .. "/c2", group = 3 },
  }
  t.eq(job:result(1), true, "request 1 ran to its end")
  t.eq(job:result(3), true, "request 3 too")
  local ok, err, code, at = job:result(2)
  t.eq(ok, nil, "request 2 failed")
  t.eq(code, "ENOENT", "its code")
  t.eq(at, 2, "at its rename")
  t.match(err, "^cannot rename .*/missing to .*/b1", "its message")
  t.eq(select(3, job:result()), "ENOENT", "the job as a whole reports the failure")
  t.eq(job:result(7), true, "a request with no step of its own has only the job's outcome")
  job:close()
  t.eq(t.read(dir .. "/a2"), "a", "request 1's steps all ran")
  t.eq(t.read(dir .. "/c2"), "c", "request 3's steps all ran")
  t.ok(not t.exists(dir .. "/b2"), "request 2's later step was skipped")
  local shared = core.fs_start {
    { "write", dir .. "/s1", "1", group = 1 }, { "fsync", dir .. "/nowhere" }, { "write", dir .. "/s2", "2", group = 1 },
  }
  local sok, _, scode, sat = shared:result(1)
  t.eq(sok, nil, "a failed step of no group fails every request")
  t.eq(scode, "ENOENT", "code")
  t.eq(sat, 2, "the shared step")
  shared:close()
  t.ok(not t.exists(dir .. "/s2"), "and stops the job")
  t.ok(not pcall(core.fs_start, { { "fsync", dir, group = 0 } }), "group 0 is misuse")
  t.ok(not pcall(core.fs_start, { { "fsync", dir, group = 1.5 } }), "a fractional group is misuse")
end)

test("a syncfs step syncs the file system of a path (Linux); a finished job wakes jobs_wait", function()
  local dir = t.tmpdir("syncfs")
  local uname = io.popen("uname -sr")
  local system, major, minor = uname:read("l"):match("^(%S+) (%d+)%.(%d+)")
  uname:close()
  major, minor = tonumber(major), tonumber(minor)
  t.eq(core.syncfs, system == "Linux" and (major > 5 or (major == 5 and minor >= 8)),
    "core.syncfs says whether syncfs is there and reports errors (Linux 5.8+)")
  if core.syncfs then
    local job = core.fs_start { { "write", dir .. "/x", "x" }, { "syncfs", dir .. "/x" }, { "syncfs", dir } }
    t.eq(job:result(), true, "synced")
    job:close()
    t.eq(core.fs_start({ { "syncfs", dir .. "/missing", dir } }):result(), true,
      "a missing path is passed over (its request failed before it); the others are synced")
    local _, err, code = core.fs_start({ { "syncfs", dir .. "/x/below" } }):result()
    t.eq(code, "EIO", "a path that cannot be looked up fails it")
    t.match(err, "^cannot sync the file system of .*/x/below: Not a directory", "named")
  end
  core.jobs_wait(0) -- forget what finished before
  local t0 = core.now()
  local job = core.fs_start { { "write", dir .. "/w", "w" } }
  local woke = core.jobs_wait(5)
  t.eq(woke, true, "jobs_wait returns when the job is done")
  t.ok(core.now() - t0 < 2, "at once, not at the end of its wait")
  t.eq(job:done(), true, "the job is done")
  job:close()
  t.eq(core.jobs_wait(0.05), false, "nothing more to wait for: false after the seconds")
end)

-- Runs fn with core.fs_start watched: the syncs of every job it starts, in order ("fsync", or
-- "syncfs of N" for N paths), joined with ", ".
local function syncs_of(fn)
  local fs_start, syncs = core.fs_start, {}
  t.defer_case(function() core.fs_start = fs_start end)
  core.fs_start = function(steps)
    for _, step in ipairs(steps) do
      if step[1] == "syncfs" then syncs[#syncs + 1] = "syncfs of " .. (#step - 1)
      elseif step[1] == "fsync" then syncs[#syncs + 1] = "fsync" end
    end
    return fs_start(steps)
  end
  fn()
  core.fs_start = fs_start
  return table.concat(syncs, ", ")
end

test("a scheduler batches the file-system requests of its tasks: barriers shared, a failure kept to its task", function()
  local download = require "modelget.download"
  local dir = t.tmpdir("batch")
  -- Below and above the number of paths at one barrier (8) from which a batch uses syncfs: the
  -- first barrier lists each request's file and the shared folder (3 paths, or 10), the second the
  -- folder alone.
  for _, count in ipairs { 2, 9 } do
    local sched = download.scheduler { jobs = 2 }
    local results = {}
    for i = 1, count do
      sched:spawn(function()
        local base = string.format("%s/%d-%d", dir, count, i)
        -- Request 2 fails after its first barrier (a rename of a missing file), request 3 before it
        -- (a write into a missing folder, so the path its barrier lists is never made).
        local from = i == 2 and base .. ".missing" or base .. ".tmp"
        local tmp = i == 3 and string.format("%s/nowhere/%d-%d.tmp", dir, count, i) or base .. ".tmp"
        results[i] = table.pack(sched:fs {
          { "write", tmp, "data " .. i }, { "barrier", tmp, dir },
          { "rename", from, base .. ".bin" }, { "barrier", dir },
        })
      end)
    end
    local synced = syncs_of(function() sched:run() end) -- how the batches made their paths durable
    sched:close()
    local paths = count + 1
    local expect = {}
    if core.syncfs and paths >= 8 then
      expect[1] = "syncfs of " .. paths -- one for all the files and the folder
    else
      for _ = 1, paths do expect[#expect + 1] = "fsync" end -- the shared folder once
    end
    expect[#expect + 1] = "fsync" -- the second barrier: the folder, once for all
    t.eq(synced, table.concat(expect, ", "), count .. ": the syncs of the batch")
    for i = 1, count do
      local base = string.format("%s/%d-%d", dir, count, i)
      if i == 2 or i == 3 then
        t.eq(results[i][1], nil, count .. ": request " .. i .. " fails")
        t.eq(results[i][3], "ENOENT", count .. ": its code")
        t.match(results[i][2], i == 2 and "%.missing" or "nowhere", count .. ": its message names the path")
        t.ok(not t.exists(base .. ".bin"), count .. ": nothing renamed for it")
      else
        t.eq(results[i][1], true, count .. ": request " .. i .. " succeeds")
        t.eq(t.read(base .. ".bin"), "data " .. i, count .. ": its file is in place")
      end
    end
  end
  -- Below the syncfs count, a path two failed requests listed (never made) is passed over too.
  local sched = download.scheduler { jobs = 2 }
  local results = {}
  for i = 1, 3 do
    sched:spawn(function()
      local folder = i == 1 and dir or (dir .. "/never")
      local file = string.format("%s/shared-%d", folder, i)
      results[i] = table.pack(sched:fs { { "write", file, "s" }, { "barrier", file, folder } })
    end)
  end
  sched:run()
  sched:close()
  t.eq(results[1][1], true, "the request that wrote its file succeeds")
  t.eq(results[2][3], "ENOENT", "the others fail on their own write")
  t.eq(results[3][3], "ENOENT", "both")
end)

test("one request's barrier of 8 paths or more is one syncfs; a path of it that is missing still fails it", function()
  local download = require "modelget.download"
  local dir = t.tmpdir("barrier")
  -- files + the folder: 7 paths (fsyncs) and 8 (one syncfs, where there is one); and 8 with a file
  -- that was never written (the request fails, as the fsync of that file would).
  for _, case in ipairs { { files = 6 }, { files = 7 }, { files = 7, missing = 4 } } do
    local sub = string.format("%s/%d-%s", dir, case.files, tostring(case.missing))
    t.ok(core.mkdirs(sub))
    local ops, paths = {}, {}
    for i = 1, case.files do
      local path = string.format("%s/f%d", sub, i)
      if i ~= case.missing then ops[#ops + 1] = { "write", path, "data " .. i } end
      paths[#paths + 1] = path
    end
    paths[#paths + 1] = sub
    ops[#ops + 1] = { "barrier", table.unpack(paths) }
    ops[#ops + 1] = { "write", sub .. "/after", "after" }
    local sched = download.scheduler { jobs = 2 }
    local result
    sched:spawn(function() result = table.pack(sched:fs(ops)) end)
    local syncs = syncs_of(function() sched:run() end)
    sched:close()
    local label = string.format("%d paths%s", #paths, case.missing and ", one missing" or "")
    local one = core.syncfs and #paths >= 8
    t.eq(syncs, one and ("syncfs of " .. #paths) or string.rep("fsync", #paths, ", "), label .. ": the syncs")
    if case.missing then
      t.eq(result[1], nil, label .. ": the request fails")
      t.eq(result[3], "ENOENT", label .. ": its code")
      t.match(result[2], "/f" .. case.missing .. ":", label .. ": its message names the missing file")
      t.ok(not t.exists(sub .. "/after"), label .. ": nothing after the barrier ran")
    else
      t.eq(result[1], true, label .. ": the request succeeds")
      t.eq(t.read(sub .. "/after"), "after", label .. ": the step after the barrier ran")
    end
  end
end)

test("a lock is exclusive until closed", function()
  local dir = t.tmpdir("lock")
  local a = assert(core.lock(dir .. "/x.lock"))
  local b, err, code = core.lock(dir .. "/x.lock")
  t.eq(b, nil, "second lock refused")
  t.eq(code, "EBUSY", "code")
  t.match(err, "in use", "message")
  t.eq(a:held(), true, "held")
  a:close()
  t.eq(a:held(), false, "not held once closed")
  a:close()
  local c = assert(core.lock(dir .. "/x.lock"), "free again after close")
  c:close()
end)

test("keyed locks: one file, a key each; the same key is refused in this process and in another", function()
  local dir = t.tmpdir("keylock")
  local path = dir .. "/.locks"
  local a = assert(core.lock(path, "model-a"))
  local b = assert(core.lock(path, "model-b"), "another key is free")
  local again, err, code = core.lock(path, "model-a")
  t.eq(again, nil, "the same key is refused")
  t.eq(code, "EBUSY", "code")
  t.match(err, "in use", "message")
  a:close()
  b:close()
  -- Another process holds model-a: only that key is refused here, and it is free once that process ends.
  t.write(dir .. "/hold.lua", string.format([[
local core = require "modelget.core"
local lock = assert(core.lock(%q, "model-a"))
local f = assert(io.open(%q, "w")); f:write("held"); f:close()
core.sleep(30)
]], path, dir .. "/held"))
  local child = t.spawn { "run", dir .. "/hold.lua" }
  t.ok(t.wait(function() return t.read(dir .. "/held") end, 10), "the other process holds its lock")
  local mine, _, busy = core.lock(path, "model-a")
  t.eq(mine, nil, "model-a is held by the other process")
  t.eq(busy, "EBUSY", "code")
  local other = assert(core.lock(path, "model-c"), "model-c is free")
  other:close()
  os.execute("kill -9 " .. child.pid)
  local freed = t.wait(function() return core.lock(path, "model-a") end, 10)
  t.ok(freed, "free once that process is gone")
  freed:close()
  -- Only the one file: no file per key.
  local names = core.listdir(dir)
  table.sort(names)
  t.eq(table.concat(names, " "), ".locks held hold.lua", "the folder holds one lock file")
end)

test("rmtree removes a symlink, never what it points to; mkdirs makes every level", function()
  local dir = t.tmpdir("rmtree")
  t.write(dir .. "/outside/keep.txt", "keep")
  assert(core.mkdirs(dir .. "/tree/a/b/c"))
  t.eq(core.stat(dir .. "/tree/a/b/c").type, "dir", "made")
  os.execute("ln -s " .. t.shquote(dir .. "/outside") .. " " .. t.shquote(dir .. "/tree/a/link"))
  assert(core.rmtree(dir .. "/tree"))
  t.ok(not t.exists(dir .. "/tree"), "tree gone")
  t.eq(t.read(dir .. "/outside/keep.txt"), "keep", "the link's target untouched")
end)

test("write_atomic replaces a file whole", function()
  local dir = t.tmpdir("atomic")
  assert(core.write_atomic(dir .. "/f.json", "one"))
  assert(core.write_atomic(dir .. "/f.json", "two"))
  t.eq(t.read(dir .. "/f.json"), "two", "content")
  t.eq(#core.listdir(dir), 1, "no temporary file left")
end)
