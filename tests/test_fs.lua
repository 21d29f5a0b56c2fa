-- The engine's file-system helpers, as the store uses them.
local t = require "t"
local core = require "modelget.core"

test("sync jobs make files and folders durable off the caller's thread, and name a failure", function()
  local dir = t.tmpdir("sync")
  t.write(dir .. "/a/b.bin", "data")
  local job = core.sync_start { dir .. "/a/b.bin", dir .. "/a", dir }
  for _ = 1, 500 do
    if job:done() then break end
    core.sleep(0.01)
  end
  t.eq(job:done(), true, "done")
  t.eq(job:result(), true, "result")
  job:close()
  local bad = core.sync_start { dir .. "/a/b.bin", dir .. "/missing" }
  local ok, err, code = bad:result() -- waits
  t.eq(ok, nil, "a missing path fails the job")
  t.eq(code, "ENOENT", "code")
  t.match(err, "cannot sync .*/missing", "names the path")
  t.ok(not pcall(core.sync_start, { 1, {} }), "a non-string path is misuse")
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
