-- Test archives built at test time: good ones in every format the engine reads, and hostile ones
-- (climbing paths, absolute names, planted links, device nodes, lying sizes) no archiver would make.
--
--   archives.make(kind, path, entries [, opts]) -> path
--     kind: "tar", "tar.gz" (or "tgz"), "tar.xz", "tar.bz2", "tar.zst", "tar.lz4", "tar.lzma", "zip", "7z"
--     entries: list of {path=, type="file"|"dir"|"symlink"|"hardlink"|"fifo"|"chardev"|"blockdev",
--       data= (file content), zeros= (file of that many zero bytes, streamed), target= (links),
--       mode= (permission bits as a number: tonumber("755", 8)), mtime=, stated= (zip: the size the headers claim)}
--     type defaults to "file", or "dir" when path ends with "/". Paths are taken as they are.
--     7z archives are made by the 7z program from a real folder: only plain names and types there.
--   archives.snapshot(dir) -> text: one line per path under dir (type, mode, sha256 or link text),
--     for "nothing else changed" comparisons.
--   archives.kinds: every kind, in a stable order.
local core = require "modelget.core"
local t = require "t"

local archives = {}

archives.kinds = { "tar", "tar.gz", "tar.xz", "tar.bz2", "tar.zst", "tar.lz4", "tar.lzma", "zip", "7z" }

-- The builder: reads a manifest (one entry a line, names hex-encoded so any byte goes through).
local BUILDER = [==[
import io, os, shutil, stat, subprocess, sys, tarfile, tempfile, zipfile

kind, out, manifest = sys.argv[1], sys.argv[2], sys.argv[3]

def text(h):
    return bytes.fromhex(h).decode("utf-8", "surrogateescape")

entries = []
for line in open(manifest, "rb").read().decode().splitlines():
    f = line.split("\t")
    entries.append(dict(type=f[0], path=text(f[1]), target=text(f[2]) if f[2] else None,
        mode=int(f[3]) if f[3] else None, data=f[4] or None, zeros=int(f[5]) if f[5] else None,
        stated=int(f[6]) if f[6] else None, mtime=int(f[7]) if f[7] else 1700000000))

class Zeros:
    def __init__(self, n): self.n = n
    def read(self, k=-1):
        k = self.n if k is None or k < 0 or k > self.n else k
        self.n -= k
        return bytes(k)

def content(e):
    return open(e["data"], "rb").read() if e["data"] else b""

def mode_of(e):
    if e["mode"] is not None: return e["mode"]
    return {"dir": 0o755, "symlink": 0o777}.get(e["type"], 0o644)

TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE,
             "blockdev": tarfile.BLKTYPE}

def build_tar(path, mode, **kw):
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape", **kw) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e["path"])
            ti.type, ti.mode, ti.mtime = TAR_TYPES[e["type"]], mode_of(e), e["mtime"]
            if e["target"] is not None: ti.linkname = e["target"]
            if e["type"] == "file" and e["zeros"] is not None:
                ti.size = e["zeros"]
                tf.addfile(ti, Zeros(e["zeros"]))
            elif e["type"] == "file":
                data = content(e)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)

ZIP_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "fifo": stat.S_IFIFO,
             "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}

def patch_zip_sizes(path):
    # Makes the local and central headers claim e["stated"] uncompressed bytes.
    claims = {e["path"]: e["stated"] for e in entries if e["stated"] is not None}
    if not claims: return
    buf = bytearray(open(path, "rb").read())
    eocd = buf.rfind(b"PK\x05\x06")
    count = int.from_bytes(buf[eocd + 10:eocd + 12], "little")
    pos = int.from_bytes(buf[eocd + 16:eocd + 20], "little")
    for _ in range(count):
        nlen, xlen, clen = (int.from_bytes(buf[pos + o:pos + o + 2], "little") for o in (28, 30, 32))
        local = int.from_bytes(buf[pos + 42:pos + 46], "little")
        name = bytes(buf[pos + 46:pos + 46 + nlen]).decode("utf-8", "surrogateescape")
        if name in claims:
            size = claims[name].to_bytes(4, "little")
            buf[pos + 24:pos + 28] = size
            buf[local + 22:local + 26] = size
        pos += 46 + nlen + xlen + clen
    open(path, "wb").write(buf)

def build_zip(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for e in entries:
            name = e["path"]
            if e["type"] == "dir" and not name.endswith("/"): name += "/"
            zi = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
            zi.create_system = 3
            zi.external_attr = ((ZIP_TYPES[e["type"]] | mode_of(e)) << 16) | (0x10 if e["type"] == "dir" else 0)
            zi.compress_type = zipfile.ZIP_STORED if e["type"] == "dir" else zipfile.ZIP_DEFLATED
            if e["zeros"] is not None:
                zi.file_size = e["zeros"]
                with zf.open(zi, "w") as w:
                    left = e["zeros"]
                    while left > 0:
                        n = min(left, 1 << 20)
                        w.write(bytes(n))
                        left -= n
            elif e["type"] == "symlink":
                zf.writestr(zi, e["target"].encode("utf-8", "surrogateescape"))
            else:
                zf.writestr(zi, content(e))
    patch_zip_sizes(path)

def build_7z(path):
    root = tempfile.mkdtemp()
    try:
        for e in entries:
            p = os.path.join(root, e["path"])
            os.makedirs(os.path.dirname(p.rstrip("/")), exist_ok=True)
            if e["type"] == "dir":
                os.makedirs(p, exist_ok=True)
            elif e["type"] == "symlink":
                os.symlink(e["target"], p)
            elif e["type"] == "hardlink":
                os.link(os.path.join(root, e["target"]), p)
            else:
                with open(p, "wb") as f:
                    f.write(content(e) if e["zeros"] is None else bytes(e["zeros"]))
            if e["type"] in ("file", "dir"): os.chmod(p, mode_of(e))
        tops = sorted({e["path"].split("/")[0] for e in entries})
        subprocess.run(["7z", "a", "-snl", "-bd", "-y", os.path.abspath(path), "--"] + tops, cwd=root,
                       check=True, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(root)

if kind == "tar": build_tar(out, "w")
elif kind in ("tar.gz", "tgz"): build_tar(out, "w:gz", compresslevel=6)
elif kind == "tar.xz": build_tar(out, "w:xz")
elif kind == "tar.bz2": build_tar(out, "w:bz2")
elif kind == "tar.zst":
    build_tar(out + ".tar", "w")
    subprocess.run(["zstd", "-q", "-f", "--rm", "-o", out, out + ".tar"], check=True)
elif kind == "tar.lz4":
    build_tar(out + ".tar", "w")
    subprocess.run(["lz4", "-q", "-f", "--rm", out + ".tar", out], check=True)
elif kind == "tar.lzma":
    import lzma
    build_tar(out + ".tar", "w")
    with open(out + ".tar", "rb") as src, lzma.open(out, "wb", format=lzma.FORMAT_ALONE) as dst:
        shutil.copyfileobj(src, dst)
    os.remove(out + ".tar")
elif kind == "zip": build_zip(out)
elif kind == "7z": build_7z(out)
else: sys.exit("unknown archive kind " + kind)
]==]

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local builder_path
local function builder()
  if not builder_path then builder_path = t.write(t.tmpdir("archive-builder") .. "/build.py", BUILDER) end
  return builder_path
end

local function int(n) return n and string.format("%d", n) or "" end

function archives.make(kind, path, entries)
  local work = t.tmpdir("archive-manifest")
  local lines = {}
  for i, e in ipairs(entries) do
    local data_file = ""
    if e.data then data_file = t.write(string.format("%s/data-%d", work, i), e.data) end
    local kind_of = e.type or (e.path:sub(-1) == "/" and "dir" or "file")
    lines[#lines + 1] = table.concat({
      kind_of, hex(e.path), e.target and hex(e.target) or "", int(e.mode), data_file, int(e.zeros),
      int(e.stated), int(e.mtime) }, "\t")
  end
  local manifest = t.write(work .. "/manifest", table.concat(lines, "\n") .. "\n")
  core.rmtree(path)
  local r = t.sh(table.concat({ "python3", t.shquote(builder()), t.shquote(kind), t.shquote(path),
    t.shquote(manifest) }, " "))
  if r.status ~= 0 then error("cannot build " .. kind .. " archive " .. path .. ": " .. r.stderr, 2) end
  core.rmtree(work)
  return path
end

local function readlink(path)
  local p = io.popen("readlink -- " .. t.shquote(path))
  local s = p:read("a")
  p:close()
  return (s:gsub("\n$", ""))
end

function archives.snapshot(dir)
  local lines = {}
  local function walk(rel)
    local full = rel == "" and dir or (dir .. "/" .. rel)
    for _, name in ipairs(core.listdir(full) or {}) do
      local r = rel == "" and name or (rel .. "/" .. name)
      local p = dir .. "/" .. r
      local st = core.stat(p)
      local what = st.type == "file" and core.sha256_file(p) or st.type == "link" and readlink(p) or ""
      lines[#lines + 1] = string.format("%s %s %o %s", r, st.type, st.mode, what)
      if st.type == "dir" then walk(r) end
    end
  end
  walk("")
  return table.concat(lines, "\n")
end

return archives
