"""History on disk: one directory per roll of one table of one shard, memory-mapped by readers.

A shard writer *rolls* (end of the UTC day, table full, ``wayy roll``): it hands the rows of
its segment to :func:`write_partition`, which stores them durably, and only then resets the
segment. Readers (:class:`HistoryStore`, and ``wayy.attach(path)[table]`` through it) see
history and memory as one table.

Layout::

    <db>/hist/
        <YYYY-MM-DD>/<table>/shard-<K>.seq-<first_seq>/    one partition (immutable)
            meta.json                      what the partition holds (below)
            ts.i64 symbol.i32 venue.i32    the table's columns, raw little-endian, one value
            <value>.f64 ... seq.i64        per row, rows in seq (arrival) order, never sorted
            blk_min.i64 blk_max.i64        min / max ts of each block of ``block_rows`` rows
            sym_rows.i64 sym_last.i64      per symbol id: rows it has here, its last row (-1)
        .tmp-<pid>-<hex>/                  a partition being written (its writer holds flock)
        .trash-<pid>-<hex>/                a partition being removed by retention

``<value>`` is ``price``/``size`` for trades and ``bid``/``ask``/``bid_size``/``ask_size`` for
quotes (``shm.layout.tables``). ``symbol`` and ``venue`` hold the writer's per-shard int32 ids;
``meta.json`` maps them back to names (``symbols[id]``, ``venues[id]``; venue 0 is ``""``).

``meta.json``: ``format`` ("wayy-history"), ``version`` (1), ``table``, ``shard``, ``date``,
``rows``, ``min_ts``/``max_ts``, ``first_seq``/``last_seq``, ``block_rows``, ``symbols``,
``venues``, ``files`` (per file key: ``bytes`` and ``crc32``), ``created_ns``. File names are
fixed by the code from the table's columns, never taken from the meta (a hostile meta cannot
point a reader anywhere else), and every size is checked against the file before mapping.

Rules every partition keeps:

- One partition per roll: several a day are fine (a fill-triggered roll, ``wayy roll``).
  The date is the roll's label (kdb+'s end-of-day date); ``min_ts``/``max_ts`` are exact.
- Per (table, shard) the partitions ordered by (date, first_seq) hold strictly increasing,
  non-overlapping seq ranges: :func:`write_partition` refuses anything else
  (:class:`HistoryExists`), so a roll retried after a crash cannot store rows twice.
- Atomic: written under ``hist/.tmp-*``, every file and the directory fsynced, renamed into
  place, parents fsynced. A crash leaves no partition or a complete one, plus at most a
  temporary directory that :func:`cleanup_temp` removes once its writer is gone.
- Every change to the tree (temporary dir created / renamed away, trash) changes ``hist/``
  itself, so one ``stat`` of ``hist/`` tells a reader whether to list again.

Reading history together with memory (``wayy.db``): memory rows of a shard whose ``seq`` is
at or below the ``last_seq`` of that (table, shard)'s history are skipped, so the window
between "partition written" and "segment reset" (a crash in it included) never shows a row
twice.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import errno
import fcntl
import json
import mmap
import os
import re
import secrets
import shutil
import time
import zlib
from collections.abc import Iterator

import numpy as np

from shm import query
from shm.layout import shard as S
from shm.layout import tables as T
from shm.segment import pid_alive
from wayy.errors import (
    CorruptData,
    IncompatibleVersion,
    InsufficientSpace,
    InvalidInput,
    UnknownTable,
    WayyError,
)
from wayy.names import NAME_RE, check_symbol, check_venue

HIST_DIR = "hist"
META_NAME = "meta.json"
FORMAT = "wayy-history"
VERSION = 1
BLOCK_ROWS = S.BLOCK_ROWS  # the same blocks as memory, so the same between() kernel prunes
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"

MAX_META_BYTES = 16 * 2**20  # a meta.json larger than this is refused unread
MAX_ROWS = 2**40  # a row count above this is corrupt, whatever the files say
MAX_NAMES = 2**31
REFRESH_S = 0.25  # readers re-stat hist/ at most this often (a roll also forces it)
RACY_NS = 2 * 10**9  # a listing taken this soon after hist/ changed is re-checked next time
MAX_MAPPED = 256  # partitions kept memory-mapped per store (bounds vm.max_map_count use)
ABANDONED_S = 60.0  # an unlocked temp dir this old is removed even if its pid was reused

DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
PART_RE = re.compile(r"shard-(\d{1,9})\.seq-(\d{1,19})\Z")
_SUFFIX = {"<i8": "i64", "<i4": "i32", "<f8": "f64"}


class HistoryExists(WayyError):
    """A partition with these rows (same or overlapping seq range) is already stored."""


# --- layout ---------------------------------------------------------------------------------
def column_dtypes(table: int) -> dict[str, str]:
    """Stored columns of ``table`` (id) and their little-endian dtypes, in result order."""
    out = {"ts": "<i8", "symbol": "<i4", "venue": "<i4"}
    for c in T.VALUE_COLUMNS[table]:
        out[c] = "<f8"
    out["seq"] = "<i8"
    return out


def file_name(key: str, dtype: str) -> str:
    """``ts.i64``, ``symbol.i32``, ``price.f64`` ..."""
    return f"{key}.{_SUFFIX[dtype]}"


def part_name(shard: int, first_seq: int) -> str:
    """Directory name of a partition: ``shard-<K>.seq-<first_seq>``."""
    return f"shard-{shard}.seq-{first_seq}"


def _expected_files(table: int, rows: int, nsym: int) -> dict[str, tuple[str, str, int]]:
    """key -> (file name, dtype, element count) of every file a partition holds."""
    nblk = -(-rows // BLOCK_ROWS)
    out = {k: (file_name(k, dt), dt, rows) for k, dt in column_dtypes(table).items()}
    out["blk_min"] = (file_name("blk_min", "<i8"), "<i8", nblk)
    out["blk_max"] = (file_name("blk_max", "<i8"), "<i8", nblk)
    out["sym_rows"] = (file_name("sym_rows", "<i8"), "<i8", nsym)
    out["sym_last"] = (file_name("sym_last", "<i8"), "<i8", nsym)
    return out


def _table_id(table: object) -> int:
    if isinstance(table, str) and table in T.TABLE_IDS:
        return T.TABLE_IDS[table]
    raise UnknownTable(f"unknown table {table!r}; tables are: {', '.join(T.TABLE_NAMES)}")


def _check_date(date: object) -> str:
    if isinstance(date, _dt.date) and not isinstance(date, _dt.datetime):
        return date.isoformat()
    if isinstance(date, str) and DATE_RE.match(date):
        try:
            _dt.date.fromisoformat(date)
            return date
        except ValueError:
            pass
    raise InvalidInput(f"date must be 'YYYY-MM-DD' or a datetime.date, got {date!r}")


def date_of_ts(ts_ns: int) -> str:
    """The UTC date ('YYYY-MM-DD') of a nanosecond timestamp (a roll's default label)."""
    return _dt.datetime.fromtimestamp(int(ts_ns) // 10**9, _dt.timezone.utc).date().isoformat()


# --- durable file helpers -------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: str) -> None:
    """mkdir -p, fsyncing the parent of every directory created (so it survives a crash)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    _makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    _fsync_dir(parent)


def _write_file(path: str, arr: np.ndarray) -> tuple[int, int]:
    """Write ``arr``'s bytes to a new file, fsync it; returns (bytes, crc32)."""
    mv = memoryview(np.ascontiguousarray(arr)).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        done = 0
        while done < len(mv):  # write() may be partial for large buffers
            done += os.write(fd, mv[done:done + (1 << 30)])
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(mv), zlib.crc32(mv)


@contextlib.contextmanager
def _translate_os(path: str) -> Iterator[None]:
    """ENOSPC / EDQUOT -> InsufficientSpace (the roll can retry once there is room)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientSpace(f"no space left writing history under {path}: {exc}",
                                    path=path) from exc
        raise


# --- writing --------------------------------------------------------------------------------
def _names_list(names: object, what: str, allow_empty: bool) -> list[str]:
    """Names as a list of str (bytes / numpy 'S' arrays are decoded as ASCII), validated."""
    if isinstance(names, np.ndarray):
        names = names.tolist()
    if not isinstance(names, (list, tuple)):
        raise InvalidInput(f"{what} must be a list of names, got {type(names).__name__}")
    if len(names) >= MAX_NAMES:
        raise InvalidInput(f"{what}: {len(names)} names is too many")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, bytes):
            n = n.rstrip(b"\0").decode("ascii", "replace")
        if not isinstance(n, str) or not (NAME_RE.match(n) or (allow_empty and n == "")):
            raise InvalidInput(f"{what}[{i}] = {n!r} is not a valid name")
        out.append(n)
    return out


def _check_columns(tid: int, columns: dict, nsym: int, nven: int) -> dict[str, np.ndarray]:
    """The caller's columns as contiguous little-endian arrays, checked for shape and range."""
    if not isinstance(columns, dict):
        raise InvalidInput("columns must be a dict of column name -> numpy array")
    want = column_dtypes(tid)
    missing = [c for c in want if c not in columns]
    extra = [c for c in columns if c not in want]
    if missing or extra:
        raise InvalidInput(f"{T.TABLE_NAMES[tid]} columns are {', '.join(want)}; missing "
                           f"{missing or 'none'}, unexpected {extra or 'none'}")
    out: dict[str, np.ndarray] = {}
    n = None
    for c, dt in want.items():
        a = np.asarray(columns[c])
        if a.ndim != 1:
            raise InvalidInput(f"column {c} must be one-dimensional, got shape {a.shape}")
        if dt != "<f8" and a.dtype.kind not in "iu":
            raise InvalidInput(f"column {c} must hold integers, got {a.dtype}")
        if dt == "<f8" and a.dtype.kind not in "fiu":
            raise InvalidInput(f"column {c} must hold numbers, got {a.dtype}")
        if n is None:
            n = len(a)
        elif len(a) != n:
            raise InvalidInput(f"column {c} has {len(a)} rows, ts has {n}")
        out[c] = np.ascontiguousarray(a, dtype=dt)
    if not n:
        raise InvalidInput("a partition needs at least one row")
    if n > MAX_ROWS:
        raise InvalidInput(f"{n} rows is more than a partition holds ({MAX_ROWS})")
    for c, limit, what in (("symbol", nsym, "symbols"), ("venue", nven, "venues")):
        ids = out[c]
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= limit:
            raise InvalidInput(f"column {c} holds ids {lo}..{hi}, but {what} has {limit} names")
    seq = out["seq"]
    if int(seq[0]) < 0 or (n > 1 and not bool(np.all(seq[1:] > seq[:-1]))):
        raise InvalidInput("seq must be non-negative and strictly increasing (rows in seq "
                           "order, as the writer assigned them)")
    return out


def _block_minmax(ts: np.ndarray, block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Min and max ts of every ``block_rows`` rows (the last block may be short)."""
    n = len(ts)
    full = n // block_rows
    mins = np.empty(-(-n // block_rows), np.int64)
    maxs = np.empty_like(mins)
    if full:
        blocks = ts[:full * block_rows].reshape(full, block_rows)
        mins[:full] = blocks.min(axis=1)
        maxs[:full] = blocks.max(axis=1)
    if n % block_rows:
        mins[full] = ts[full * block_rows:].min()
        maxs[full] = ts[full * block_rows:].max()
    return mins, maxs


def _list_parts(hist: str, tid: int | None = None) -> list[tuple[str, str, int, int, int]]:
    """(path, date, table id, shard, first_seq) of every partition-named directory, sorted by
    (date, table, shard, first_seq). Other entries are ignored (verify reports them)."""
    out = []
    try:
        dates = os.listdir(hist)
    except (FileNotFoundError, NotADirectoryError):  # no history (yet)
        return out
    tables = T.TABLE_NAMES if tid is None else (T.TABLE_NAMES[tid],)
    for date in dates:
        if not DATE_RE.match(date):
            continue
        for table in tables:
            tdir = os.path.join(hist, date, table)
            try:
                names = os.listdir(tdir)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                m = PART_RE.match(name)
                if m:
                    out.append((os.path.join(tdir, name), date, T.TABLE_IDS[table],
                                int(m.group(1)), int(m.group(2))))
    out.sort(key=lambda p: (p[1], p[2], p[3], p[4]))
    return out


def shard_next_seq(db_path: str, shard: int) -> int:
    """One past the highest seq the history of ``shard`` holds, in either table (0 if it
    holds none): a writer must never give out a seq at or below it, or queries, which skip
    memory rows that history already holds, would hide the new rows. A partition whose
    meta.json cannot be read counts from the first seq in its name (the caller still
    continues above every readable one)."""
    hist = os.path.join(db_path, HIST_DIR)
    newest: dict[int, tuple[str, int]] = {}
    for path, _date, tid, k, first in _list_parts(hist):
        if k == shard:
            newest[tid] = (path, first)  # sorted by (date, first_seq): the last one wins
    nxt = 0
    for path, first in newest.values():
        try:
            last = int(read_meta(path)["last_seq"])
        except WayyError:
            last = first
        nxt = max(nxt, last + 1)
    return nxt


def rows_in_seq_range(db_path: str, shard: int, table: int, lo: int, hi: int) -> int:
    """Rows the history of ``table`` (id) of ``shard`` holds with ``lo <= seq < hi``; a
    partition that cannot be read counts none (`wayy verify` reports it)."""
    if hi <= lo:
        return 0
    count = 0
    for path, date, tid, k, first in _list_parts(os.path.join(db_path, HIST_DIR), table):
        if k != shard or first >= hi:
            continue
        part = Partition(path, date, tid, k, first)
        try:
            if part.last_seq < lo:
                continue
            seq = part.array("seq")
            count += int(np.searchsorted(seq, hi)) - int(np.searchsorted(seq, lo))
        except WayyError:
            continue
        finally:
            part.unmap()
    return count


def write_partition(db_path: str, date, table: str, shard: int, columns: dict,
                    symbols, venues) -> str:
    """Store one roll of ``table`` of ``shard`` as the partition of ``date``; returns its path.

    ``columns``: every stored column of the table (``ts``, ``symbol`` and ``venue`` as the
    shard's int32 ids, the value columns, ``seq``), rows in seq order. ``symbols`` /
    ``venues``: the shard's name tables (id -> name; str, bytes or a numpy 'S' array).
    Atomic and durable: a crash leaves no partition or a complete one. Raises
    :class:`HistoryExists` when (table, shard) already holds rows at or past this
    ``first_seq`` (a retried roll), ``InvalidInput`` for malformed input or a date before the
    shard's latest partition, ``CorruptData`` if that latest partition is unreadable,
    ``InsufficientSpace`` when the disk is full (nothing is left behind).
    """
    tid = _table_id(table)
    date = _check_date(date)
    if isinstance(shard, bool) or not isinstance(shard, (int, np.integer)) or not \
            0 <= shard < 10**9:
        raise InvalidInput(f"shard must be a non-negative int, got {shard!r}")
    shard = int(shard)
    syms = _names_list(symbols, "symbols", allow_empty=False)
    vens = _names_list(venues, "venues", allow_empty=True)
    cols = _check_columns(tid, columns, len(syms), len(vens))
    n = len(cols["ts"])
    first_seq, last_seq = int(cols["seq"][0]), int(cols["seq"][-1])
    hist = os.path.join(os.fspath(db_path), HIST_DIR)
    with _translate_os(hist):
        _makedirs_durable(hist)
        cleanup_temp(db_path)
        _check_order(hist, tid, shard, date, first_seq)
        tmp = os.path.join(hist, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
        os.mkdir(tmp)
        lock = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # tells cleanup_temp this one is alive
            final = _write_into(tmp, hist, date, tid, shard, cols, syms, vens, n,
                                first_seq, last_seq)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(lock)
    return final


def _check_order(hist: str, tid: int, shard: int, date: str, first_seq: int) -> None:
    """Refuse rows that the (table, shard) history already holds, or a date going back."""
    mine = [p for p in _list_parts(hist, tid) if p[3] == shard]
    if not mine:
        return
    path, last_date, _, _, last_first = mine[-1]
    for p in mine:
        if p[1] == date and p[4] == first_seq:
            raise HistoryExists(f"partition {p[0]} already exists", shard=shard,
                                seq=first_seq, path=p[0])
    meta = read_meta(path)
    if first_seq <= meta["last_seq"]:
        raise HistoryExists(
            f"{T.TABLE_NAMES[tid]} shard {shard}: history already holds seq up to "
            f"{meta['last_seq']} ({path}); these rows start at seq {first_seq}",
            shard=shard, seq=first_seq, path=path)
    if date < last_date:
        raise InvalidInput(f"{T.TABLE_NAMES[tid]} shard {shard}: date {date} is before the "
                           f"latest partition's date {last_date} ({path})", path=path)


def _write_into(tmp: str, hist: str, date: str, tid: int, shard: int, cols: dict,
                syms: list[str], vens: list[str], n: int, first_seq: int,
                last_seq: int) -> str:
    files: dict[str, dict] = {}
    expected = _expected_files(tid, n, len(syms))
    mins, maxs = _block_minmax(cols["ts"])
    sym_rows = np.bincount(cols["symbol"], minlength=len(syms)).astype("<i8")
    sym_last = np.full(len(syms), -1, "<i8")
    np.maximum.at(sym_last, cols["symbol"], np.arange(n, dtype=np.int64))
    arrays = dict(cols, blk_min=mins, blk_max=maxs, sym_rows=sym_rows, sym_last=sym_last)
    for key, (fname, dtype, count) in expected.items():
        nbytes, crc = _write_file(os.path.join(tmp, fname), arrays[key].astype(dtype,
                                                                             copy=False))
        files[key] = {"bytes": nbytes, "crc32": crc}
    meta = {
        "format": FORMAT, "version": VERSION, "table": T.TABLE_NAMES[tid], "shard": shard,
        "date": date, "rows": n, "min_ts": int(mins.min()), "max_ts": int(maxs.max()),
        "first_seq": first_seq, "last_seq": last_seq, "block_rows": BLOCK_ROWS,
        "symbols": syms, "venues": vens, "files": files, "created_ns": time.time_ns(),
    }
    meta_path = os.path.join(tmp, META_NAME)
    fd = os.open(meta_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        data = json.dumps(meta, separators=(",", ":")).encode()
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(tmp)
    parent = os.path.join(hist, date, T.TABLE_NAMES[tid])
    final = os.path.join(parent, part_name(shard, first_seq))
    for attempt in range(3):
        _makedirs_durable(parent)
        try:
            os.rename(tmp, final)  # fails if final exists: partitions are never empty dirs
            break
        except FileNotFoundError:
            if attempt == 2:  # retention removed the empty parent meanwhile: make it again
                raise
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise HistoryExists(f"partition {final} already exists", shard=shard,
                                    seq=first_seq, path=final) from exc
            raise
    _fsync_dir(parent)
    _fsync_dir(hist)  # the temporary entry is gone
    return final


# --- temporary and trash directories ------------------------------------------------------------
def _abandoned(path: str, name: str) -> bool:
    """A temp dir whose writer is gone: nobody holds its flock, and its pid is dead (or it is
    old enough that the pid must have been reused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            pid = int(name[len(TMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            pid = 0
        if pid == os.getpid() or not pid_alive(pid):
            return True
        # the owner may sit between mkdir and flock: only an old unlocked dir is abandoned
        return time.time() - os.fstat(fd).st_mtime > ABANDONED_S
    finally:
        os.close(fd)


def cleanup_temp(db_path: str) -> list[str]:
    """Remove what crashed writers and removals left under ``<db>/hist``: temporary
    directories whose writer is gone and trash directories. Returns the paths removed."""
    hist = os.path.join(os.fspath(db_path), HIST_DIR)
    removed = []
    try:
        names = os.listdir(hist)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(hist, name)
        if name.startswith(TRASH_PREFIX) or (name.startswith(TMP_PREFIX)
                                             and _abandoned(path, name)):
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.exists(path):
                removed.append(path)
    if removed:
        _fsync_dir(hist)
    return removed


# --- meta -----------------------------------------------------------------------------------
def _int(meta: dict, key: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{key} = {v!r} is not an int in [{lo}, {hi}]")
    return v


def _parse_meta(raw: bytes) -> dict:
    """Validated meta: every field typed and in range (ValueError / IncompatibleVersion)."""
    meta = json.loads(raw)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} meta")
    version = meta.get("version")
    if version != VERSION:
        raise IncompatibleVersion(f"history partition version {version!r}, this wayy reads "
                                  f"version {VERSION}")
    tid = _table_id(meta.get("table"))
    _int(meta, "shard", 0, 10**9 - 1)
    date = meta.get("date")
    if not isinstance(date, str) or not DATE_RE.match(date):
        raise ValueError(f"date = {date!r}")
    _check_date(date)
    rows = _int(meta, "rows", 1, MAX_ROWS)
    i64 = (-(2**63), 2**63 - 1)
    lo_ts, hi_ts = _int(meta, "min_ts", *i64), _int(meta, "max_ts", *i64)
    lo_seq, hi_seq = _int(meta, "first_seq", 0, i64[1]), _int(meta, "last_seq", 0, i64[1])
    if lo_ts > hi_ts or hi_seq - lo_seq + 1 < rows:
        raise ValueError(f"ts {lo_ts}..{hi_ts} / seq {lo_seq}..{hi_seq} impossible for "
                         f"{rows} rows")
    if _int(meta, "block_rows", 1, 2**30) != BLOCK_ROWS:
        raise ValueError(f"block_rows {meta['block_rows']}, expected {BLOCK_ROWS}")
    for key, empty in (("symbols", False), ("venues", True)):
        names = meta.get(key)
        if not isinstance(names, list) or not names or len(names) >= MAX_NAMES or not all(
                isinstance(s, str) and (NAME_RE.match(s) or (empty and s == ""))
                for s in names):
            raise ValueError(f"{key} is not a non-empty list of valid names")
    files = meta.get("files")
    if not isinstance(files, dict):
        raise ValueError("files is missing")
    for key, (_, dtype, count) in _expected_files(tid, rows, len(meta["symbols"])).items():
        f = files.get(key)
        if not isinstance(f, dict):
            raise ValueError(f"files[{key!r}] is missing")
        want = count * np.dtype(dtype).itemsize
        if _int(f, "bytes", 0, 2**62) != want:
            raise ValueError(f"files[{key!r}].bytes = {f['bytes']}, {rows} rows need {want}")
        _int(f, "crc32", 0, 2**32 - 1)
    return meta


def read_meta(path: str) -> dict:
    """The validated meta.json of the partition at ``path`` (CorruptData if it is not)."""
    mpath = os.path.join(path, META_NAME)
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_META_BYTES + 1)
        if len(raw) > MAX_META_BYTES:
            raise ValueError(f"larger than {MAX_META_BYTES} bytes")
        meta = _parse_meta(raw)
    except IncompatibleVersion as exc:
        raise IncompatibleVersion(f"{mpath}: {exc}", path=path) from exc
    except (OSError, ValueError, RecursionError, UnknownTable, InvalidInput) as exc:
        raise CorruptData(f"history partition {path}: bad {META_NAME}: {exc} (run "
                          f"`wayy verify`)", path=path) from exc
    m = PART_RE.match(os.path.basename(path))
    where = (os.path.basename(os.path.dirname(os.path.dirname(path))),
             os.path.basename(os.path.dirname(path)))
    if m is None or (int(m.group(1)), int(m.group(2))) != (meta["shard"], meta["first_seq"]) \
            or where != (meta["date"], meta["table"]):
        raise CorruptData(f"history partition {path}: its {META_NAME} describes "
                          f"{meta['date']}/{meta['table']}/{part_name(meta['shard'], meta['first_seq'])}",
                          path=path)
    return meta


# --- reading --------------------------------------------------------------------------------
class Partition:
    """One partition: its meta (read once) and its files, memory-mapped on first use."""

    def __init__(self, path: str, date: str, table: int, shard: int, first_seq: int,
                 store: "HistoryStore | None" = None) -> None:
        self.path = path
        self.date = date
        self.table = table
        self.shard = shard
        self.first_seq = first_seq
        self._store = store
        self._meta: dict | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._sym_ids: dict[str, int] | None = None
        self._ven_ids: dict[str, int] | None = None
        self._names: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def meta(self) -> dict:
        if self._meta is None:
            self._meta = read_meta(self.path)
        return self._meta

    @property
    def rows(self) -> int:
        return self.meta["rows"]

    @property
    def min_ts(self) -> int:
        return self.meta["min_ts"]

    @property
    def max_ts(self) -> int:
        return self.meta["max_ts"]

    @property
    def last_seq(self) -> int:
        return self.meta["last_seq"]

    def array(self, key: str) -> np.ndarray:
        """File ``key`` (a column, ``blk_min``, ``sym_rows`` ...) as a read-only mapped array."""
        a = self._arrays.get(key)
        if a is None:
            meta = self.meta
            fname, dtype, count = _expected_files(self.table, meta["rows"],
                                                  len(meta["symbols"]))[key]
            fpath = os.path.join(self.path, fname)
            want = count * np.dtype(dtype).itemsize
            try:
                fd = os.open(fpath, os.O_RDONLY)
            except OSError as exc:
                raise CorruptData(f"history partition {self.path}: cannot open {fname}: "
                                  f"{exc} (run `wayy verify`)", path=self.path) from exc
            try:
                size = os.fstat(fd).st_size
                if size != want:  # checked before mapping: a short file would SIGBUS a reader
                    raise CorruptData(f"history partition {self.path}: {fname} is {size} "
                                      f"bytes, {meta['rows']} rows need {want} (run `wayy "
                                      f"verify`)", path=self.path)
                mm = mmap.mmap(fd, want, prot=mmap.PROT_READ) if want else b""
            finally:
                os.close(fd)
            a = np.frombuffer(mm, np.dtype(dtype), count)
            if not self._arrays and self._store is not None:
                self._store._touch(self)
            self._arrays[key] = a
        return a

    def load(self) -> None:
        """Read every file into private RAM instead of mapping it (a hot partition pinned;
        also the in-memory peer of benchmarks/bench_history.py)."""
        meta = self.meta
        for key in _expected_files(self.table, meta["rows"], len(meta["symbols"])):
            self._arrays[key] = np.array(self.array(key))

    def unmap(self) -> None:
        """Drop the mappings (results are copies; arrays still referenced stay valid)."""
        self._arrays = {}

    def names(self) -> tuple[np.ndarray, np.ndarray]:
        """(symbol names, venue names) as 'U' arrays indexed by id."""
        if self._names is None:
            self._names = (_as_u(self.meta["symbols"]), _as_u(self.meta["venues"]))
        return self._names

    def symbol_id(self, symbol: str) -> int:
        """This partition's id of ``symbol`` with at least one row here, or -1."""
        if self._sym_ids is None:
            self._sym_ids = {s: i for i, s in enumerate(self.meta["symbols"])}
        sid = self._sym_ids.get(symbol, -1)
        if sid >= 0 and self.array("sym_rows")[sid] == 0:
            return -1
        return sid

    def venue_id(self, venue: str) -> int:
        if self._ven_ids is None:
            self._ven_ids = {s: i for i, s in enumerate(self.meta["venues"])}
        return self._ven_ids.get(venue, -1)

    def __repr__(self) -> str:
        return (f"<wayy.history.Partition {self.date} {T.TABLE_NAMES[self.table]} shard "
                f"{self.shard} seq {self.first_seq}..>")


def _as_u(names: list[str]) -> np.ndarray:
    width = max((len(s) for s in names), default=1) or 1
    return np.array(names, dtype=f"U{width}")


def empty_columns(table: int) -> dict[str, np.ndarray]:
    """Zero-row result columns of ``table`` (names as 'U1')."""
    return {c: np.empty(0, "U1") if c in ("symbol", "venue") else np.empty(0, dt[1:])
            for c, dt in column_dtypes(table).items()}


def gather(part: Partition, rows: np.ndarray | slice, decode: bool = True
           ) -> dict[str, np.ndarray]:
    """Result columns (copies) of ``rows`` of a partition; names decoded, or with
    ``decode=False`` the symbol and venue ids that ``part.names()`` index."""
    syms, vens = part.names() if decode else (None, None)
    take = isinstance(rows, np.ndarray)
    out = {}
    for c in column_dtypes(part.table):
        a = part.array(c)
        v = a.take(rows) if take else a[rows].copy()
        if decode and c in ("symbol", "venue"):
            names = syms if c == "symbol" else vens
            try:
                if len(v) and v.min() < 0:  # numpy would read -1 as the last name
                    raise IndexError
                v = names[v]
            except IndexError:
                # ids past the partition's name list: its column file was damaged after the
                # partition was written (checksums: `wayy verify`)
                raise CorruptData(f"{part.path}: {c} ids outside its {len(names)} names: "
                                  f"the partition is damaged (wayy verify checks it)",
                                  path=part.path) from None
        out[c] = v
    return out


def scan_back(sym: np.ndarray, ven: np.ndarray, lo: int, hi: int, sid: int, vid: int,
              need: int, total: int = -1) -> np.ndarray:
    """Rows in [lo, hi) with symbol ``sid`` and venue ``vid`` (-1: any), the last ``need`` of
    them, ascending. Scans backwards in chunks that grow 4x, vectorised; stops early once
    ``total`` matches (when known) have been found."""
    found: list[np.ndarray] = []
    got = 0
    chunk = max(4096, 8 * need)
    while hi > lo and got < need:
        start = max(lo, hi - chunk)
        if sid >= 0:
            m = sym[start:hi] == sid
            if vid >= 0:
                m &= ven[start:hi] == vid
        else:
            m = ven[start:hi] == vid
        idx = np.flatnonzero(m)
        if len(idx):
            found.append(idx + start)
            got += len(idx)
        if 0 <= total <= got:
            break
        hi = start
        chunk *= 4
    if not found:
        return np.empty(0, np.int64)
    rows = np.concatenate(found[::-1]) if len(found) > 1 else found[0]
    return rows[-need:]


def part_between(part: Partition, start: int, end: int, symbol: str | None,
                 venue: str | None) -> dict[str, np.ndarray] | None:
    """Columns of a partition's rows with start <= ts < end (and symbol / venue), in row
    (seq) order; None when none. Blocks outside the range are skipped unread."""
    if part.max_ts < start or part.min_ts >= end:
        return None
    sid = vid = -1
    if symbol is not None and (sid := part.symbol_id(symbol)) < 0:
        return None
    if venue is not None and (vid := part.venue_id(venue)) < 0:
        return None
    n = part.rows
    if sid < 0 and part.min_ts >= start and part.max_ts < end:
        rows: np.ndarray | slice = slice(0, n)  # the whole partition: no scan, no gather
    else:
        r = query.between_rows(part.array("ts"), part.array("blk_min"), part.array("blk_max"),
                               n, start, end, part.array("symbol"), sid)
        if len(r) == 0:
            return None
        rows = slice(int(r[0]), int(r[-1]) + 1) if vid < 0 and query.is_contiguous(r) else r
    if vid >= 0:
        if isinstance(rows, slice):
            rows = np.flatnonzero(part.array("venue")[rows] == vid) + rows.start
        else:
            rows = rows[part.array("venue").take(rows) == vid]
        if len(rows) == 0:
            return None
    return gather(part, rows)


def part_tail(part: Partition, need: int, symbol: str | None,
              venue: str | None) -> dict[str, np.ndarray] | None:
    """Columns of the last ``need`` rows of a partition (with symbol / venue), seq order."""
    n = part.rows
    sid = vid = -1
    if symbol is not None and (sid := part.symbol_id(symbol)) < 0:
        return None
    if venue is not None and (vid := part.venue_id(venue)) < 0:
        return None
    if sid < 0 and vid < 0:
        return gather(part, slice(max(0, n - need), n))
    hi, total = n, -1
    if sid >= 0:
        hi = int(part.array("sym_last")[sid]) + 1
        total = int(part.array("sym_rows")[sid]) if vid < 0 else -1
    rows = scan_back(part.array("symbol"), part.array("venue"), 0, hi, sid, vid, need, total)
    return gather(part, rows) if len(rows) else None


def concat(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One set of columns from several (same keys, in order)."""
    if len(pieces) == 1:
        return pieces[0]
    return {c: np.concatenate([p[c] for p in pieces]) for c in pieces[0]}


def merge_by_ts(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate pieces given in (shard, seq) order and sort by ts, stably: rows with equal
    ts keep shard-then-seq order. Already sorted input is not copied again."""
    cols = concat(pieces)
    ts = cols["ts"]
    if not query.is_sorted(ts):
        order = np.argsort(ts, kind="stable")
        cols = {c: v[order] for c, v in cols.items()}
    return cols


def tail_of(cols: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The last ``n`` rows of ``cols``."""
    k = len(cols["ts"])
    return cols if k <= n else {c: v[k - n:] for c, v in cols.items()}


class HistoryStore:
    """The partitions under ``<db>/hist``, listed cheaply and mapped lazily.

    The listing is cached and re-checked (one ``stat`` of ``hist/``) at most every
    ``refresh_s`` seconds, or at once with :meth:`refresh`: ``wayy.db`` calls it when a
    shard's generation moves (a roll). Works whether or not the database is running.
    """

    def __init__(self, db_path: str, refresh_s: float = REFRESH_S,
                 max_mapped: int = MAX_MAPPED) -> None:
        self.db_path = os.fspath(db_path)
        self.hist = os.path.join(self.db_path, HIST_DIR)
        self.refresh_s = refresh_s
        self.max_mapped = max_mapped
        self._key: tuple | None = None
        self._racy = False
        self._checked = -float("inf")
        self._parts: dict[str, Partition] = {}
        self._by_table: list[list[Partition]] = [[] for _ in T.TABLE_NAMES]
        self._by_shard: list[dict[int, list[Partition]]] = [{} for _ in T.TABLE_NAMES]
        self._last_seq: dict[tuple[int, int], int] = {}
        self._mapped: collections.OrderedDict[str, Partition] = collections.OrderedDict()
        # monotonic time until which the store is known to be empty: memory-only queries
        # check this one float instead of calling anything (see wayy.db's fast paths)
        self.empty_until = 0.0

    # --- listing ------------------------------------------------------------------------
    def refresh(self) -> bool:
        """List ``hist/`` again if it changed since the last listing (or that listing was
        racy); True if it listed again."""
        self._checked = time.monotonic()
        changed = self._relist()
        self.empty_until = 0.0 if self._parts else self._checked + self.refresh_s
        return changed

    def _relist(self) -> bool:
        try:
            st = os.stat(self.hist)
        except FileNotFoundError:
            if self._key is None:
                return False
            self._key = None
            self._install([])
            return True
        key = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        if key == self._key and not self._racy:
            return False
        # a change within the timestamp granularity of this listing would leave the same
        # mtime: such a listing is taken again on the next check (git's "racy" rule)
        self._racy = time.time_ns() - st.st_mtime_ns < RACY_NS
        self._key = key
        self._install(_list_parts(self.hist))
        return True

    def _install(self, listed: list[tuple]) -> None:
        parts = {}
        for path, date, tid, shard, first in listed:
            parts[path] = self._parts.get(path) or Partition(path, date, tid, shard, first,
                                                             self)
        for path in self._parts.keys() - parts.keys():
            self._mapped.pop(path, None)
        self._parts = parts
        by_table: list[list[Partition]] = [[] for _ in T.TABLE_NAMES]
        by_shard: list[dict[int, list[Partition]]] = [{} for _ in T.TABLE_NAMES]
        for p in parts.values():  # listed in (date, table, shard, first_seq) order
            by_table[p.table].append(p)
            by_shard[p.table].setdefault(p.shard, []).append(p)
        self._by_table, self._by_shard, self._last_seq = by_table, by_shard, {}

    def poll(self) -> None:
        """Refresh if the listing was last checked more than ``refresh_s`` seconds ago."""
        if time.monotonic() - self._checked >= self.refresh_s:
            self.refresh()

    def partitions(self, table: str | None = None) -> list[Partition]:
        """Partitions (of ``table``, or all), in (date, shard, first_seq) order."""
        self.poll()
        if table is None:
            return [p for ps in self._by_table for p in ps]
        return self._by_table[_table_id(table)]

    def by_shard(self, table: int) -> dict[int, list[Partition]]:
        """Partitions of table id ``table`` per shard, each list in (date, first_seq) =
        seq order. The cached listing: callers refresh first."""
        return self._by_shard[table]

    def last_seq(self, table: str | int, shard: int) -> int:
        """Highest seq stored for (table, shard), -1 if none (memory rows at or below it
        are already history)."""
        tid = table if isinstance(table, int) else _table_id(table)
        self.poll()
        got = self._last_seq.get((tid, shard))
        if got is None:
            ps = self._by_shard[tid].get(shard)
            got = self._last_seq[(tid, shard)] = ps[-1].last_seq if ps else -1
        return got

    def rows(self, table: str) -> int:
        """Rows stored for ``table``."""
        return sum(p.rows for p in self.partitions(table))

    def _touch(self, part: Partition) -> None:
        """LRU of mapped partitions: unmap the oldest past ``max_mapped``."""
        self._mapped[part.path] = part
        self._mapped.move_to_end(part.path)
        while len(self._mapped) > self.max_mapped:
            _, old = self._mapped.popitem(last=False)
            old.unmap()

    # --- queries ------------------------------------------------------------------------
    def between(self, table: str, start_ts: int | None = None, end_ts: int | None = None,
                symbol: str | None = None, venue: str | None = None):
        """History rows with start_ts <= ts < end_ts (of ``symbol`` / ``venue``), in ts
        order; equal ts keep shard then seq order. Returns a :class:`wayy.Result`."""
        from wayy.db import Result, _ts_bound

        tid = _table_id(table)
        start = _ts_bound(start_ts, "start_ts", np.iinfo(np.int64).min)
        end = _ts_bound(end_ts, "end_ts", np.iinfo(np.int64).max)
        _check_filters(symbol, venue)
        self.poll()
        pieces = []
        for shard in sorted(self._by_shard[tid]):
            for p in self._by_shard[tid][shard]:
                got = part_between(p, start, end, symbol, venue)
                if got is not None:
                    pieces.append(got)
        return Result(table, merge_by_ts(pieces) if pieces else empty_columns(tid))

    def shard_tail(self, parts: list[Partition], n: int, symbol: str | None,
                   venue: str | None) -> dict[str, np.ndarray] | None:
        """The last ``n`` matching rows of one shard's partitions (seq order), newest
        partitions first, each scanned backwards."""
        pieces = []
        need = n
        for p in reversed(parts):
            if need <= 0:
                break
            got = part_tail(p, need, symbol, venue)
            if got is not None:
                pieces.append(got)
                need -= len(got["ts"])
        return concat(pieces[::-1]) if pieces else None

    def tail(self, table: str, n: int = 20, symbol: str | None = None,
             venue: str | None = None):
        """The last ``n`` history rows (of ``symbol`` / ``venue``), oldest first: per shard
        the last ``n`` in seq order, merged by ts (a symbol's rows from a single shard stay
        in seq order), as ``wayy.Table.tail`` orders them."""
        from wayy.db import Result

        tid = _table_id(table)
        n = _check_n(n)
        _check_filters(symbol, venue)
        self.poll()
        pieces = []
        for shard in sorted(self._by_shard[tid]):
            got = self.shard_tail(self._by_shard[tid][shard], n, symbol, venue) if n else None
            if got is not None:
                pieces.append(got)
        if not pieces:
            return Result(table, empty_columns(tid))
        # as memory does: a symbol's rows from one shard stay in arrival order
        cols = pieces[0] if len(pieces) == 1 and symbol is not None else merge_by_ts(pieces)
        return Result(table, tail_of(cols, n))

    def close(self) -> None:
        """Unmap everything (the store lists again if used after)."""
        for p in self._parts.values():
            p.unmap()
        self._mapped.clear()


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InvalidInput(f"n must be a non-negative int, got {n!r}")
    return int(n)


def _check_filters(symbol: str | None, venue: str | None) -> None:
    if symbol is not None:
        check_symbol(symbol)
    if venue is not None:
        check_venue(venue)


# --- verification ---------------------------------------------------------------------------
_CHUNK = 1 << 20  # rows per step when verifying: bounded memory whatever the file size


def verify_partition(path: str) -> list[str]:
    """Every problem found in the partition at ``path`` (empty: it is good): meta unreadable
    or inconsistent, missing or wrong-length files, crc mismatches, seq not strictly
    increasing, ts / seq / ids / blocks disagreeing with the meta. Reads in bounded chunks."""
    try:
        meta = read_meta(path)
    except (CorruptData, IncompatibleVersion) as exc:
        return [str(exc)]
    tid = T.TABLE_IDS[meta["table"]]
    rows, nsym, nven = meta["rows"], len(meta["symbols"]), len(meta["venues"])
    problems = []
    arrays: dict[str, np.ndarray] = {}
    for key, (fname, dtype, count) in _expected_files(tid, rows, nsym).items():
        fpath = os.path.join(path, fname)
        want = count * np.dtype(dtype).itemsize
        try:
            size = os.path.getsize(fpath)
        except OSError:
            problems.append(f"{fname}: missing")
            continue
        if size != want:
            problems.append(f"{fname}: {size} bytes, expected {want}")
            continue
        with open(fpath, "rb") as f:
            mm = mmap.mmap(f.fileno(), want, prot=mmap.PROT_READ) if want else b""
        crc = 0
        for off in range(0, want, 64 * _CHUNK):
            crc = zlib.crc32(mm[off:off + 64 * _CHUNK], crc)
        if crc != meta["files"][key]["crc32"]:
            problems.append(f"{fname}: crc32 {crc:#010x}, meta says "
                            f"{meta['files'][key]['crc32']:#010x}")
            continue
        arrays[key] = np.frombuffer(mm, dtype, count)
    problems += _check_content(meta, arrays, nsym, nven)
    for name in sorted(os.listdir(path)):
        if name != META_NAME and name not in {f for f, _, _ in
                                              _expected_files(tid, rows, nsym).values()}:
            problems.append(f"{name}: unexpected file")
    return problems


def _check_content(meta: dict, a: dict[str, np.ndarray], nsym: int, nven: int) -> list[str]:
    """Checks of the column contents against each other and the meta, chunk by chunk."""
    out = []
    rows = meta["rows"]
    if "seq" in a:
        seq = a["seq"]
        if int(seq[0]) != meta["first_seq"] or int(seq[-1]) != meta["last_seq"]:
            out.append(f"seq runs {int(seq[0])}..{int(seq[-1])}, meta says "
                       f"{meta['first_seq']}..{meta['last_seq']}")
        for lo in range(0, rows - 1, _CHUNK):
            hi = min(rows, lo + _CHUNK + 1)
            bad = np.flatnonzero(seq[lo + 1:hi] <= seq[lo:hi - 1])
            if len(bad):
                out.append(f"seq not strictly increasing at row {lo + int(bad[0]) + 1}")
                break
    for c, limit in (("symbol", nsym), ("venue", nven)):
        if c in a:
            for lo in range(0, rows, _CHUNK):
                ids = a[c][lo:lo + _CHUNK]
                if int(ids.min()) < 0 or int(ids.max()) >= limit:
                    out.append(f"{c} ids outside 0..{limit - 1} near row {lo}")
                    break
    if "ts" in a:
        mins, maxs = _block_minmax(a["ts"])
        if int(mins.min()) != meta["min_ts"] or int(maxs.max()) != meta["max_ts"]:
            out.append(f"ts runs {int(mins.min())}..{int(maxs.max())}, meta says "
                       f"{meta['min_ts']}..{meta['max_ts']}")
        if "blk_min" in a and "blk_max" in a and not (
                np.array_equal(mins, a["blk_min"]) and np.array_equal(maxs, a["blk_max"])):
            out.append("block ts index disagrees with the ts column")
    if "symbol" in a and "sym_rows" in a and not out:
        counts = np.zeros(nsym, np.int64)
        for lo in range(0, rows, _CHUNK):
            counts += np.bincount(a["symbol"][lo:lo + _CHUNK], minlength=nsym)
        if not np.array_equal(counts, a["sym_rows"]):
            out.append("per-symbol row counts disagree with the symbol column")
    return out


def verify_history(db_path: str) -> dict[str, list[str]]:
    """Verify every partition under ``<db>/hist``: path -> problems (an empty list: good).
    Entries that are neither partitions nor in-flight temporary / trash directories are
    reported too."""
    hist = os.path.join(os.fspath(db_path), HIST_DIR)
    out: dict[str, list[str]] = {}
    if not os.path.isdir(hist):
        return out
    for name in sorted(os.listdir(hist)):
        p = os.path.join(hist, name)
        if name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            continue
        if not DATE_RE.match(name) or not os.path.isdir(p):
            out[p] = ["unexpected entry in hist/"]
            continue
        for table in sorted(os.listdir(p)):
            tp = os.path.join(p, table)
            if table not in T.TABLE_IDS or not os.path.isdir(tp):
                out[tp] = ["unexpected entry (not a table directory)"]
                continue
            for part in sorted(os.listdir(tp)):
                pp = os.path.join(tp, part)
                out[pp] = verify_partition(pp) if PART_RE.match(part) and os.path.isdir(pp) \
                    else ["unexpected entry (not a partition directory)"]
    by_shard: dict[tuple[int, int], list[tuple]] = {}
    for path, date, tid, shard, first in _list_parts(hist):
        by_shard.setdefault((tid, shard), []).append((path, date, first))
    for parts in by_shard.values():  # seq ranges must not overlap across a shard's partitions
        prev_last, prev_path = -1, None
        for path, _, first in parts:
            if out.get(path):
                continue
            if first <= prev_last:
                out[path].append(f"first_seq {first} overlaps {prev_path} (up to {prev_last})")
            prev_last, prev_path = read_meta(path)["last_seq"], path
    return out


# --- retention ------------------------------------------------------------------------------
def apply_retention(db_path: str, keep_days: int | None, today=None,
                    shard: int | None = None) -> list[str]:
    """Remove partitions dated more than ``keep_days`` days before ``today`` (UTC today by
    default): ``keep_days=7`` keeps today and the 7 days before it; ``None`` keeps all.
    ``shard``: only that shard's partitions (each writer applies retention to its own, so
    none removes a partition another shard's roll is still writing and checking).
    Each partition is renamed to a trash name first (readers stop seeing it at once, and a
    crash leaves only trash that :func:`cleanup_temp` removes), then deleted. Returns the
    partitions' former paths."""
    if keep_days is None:
        return []
    if isinstance(keep_days, bool) or not isinstance(keep_days, (int, np.integer)) or \
            keep_days < 0:
        raise InvalidInput(f"keep_days must be a non-negative int or None, got {keep_days!r}")
    if today is None:
        today = _dt.datetime.now(_dt.timezone.utc).date()
    today = _dt.date.fromisoformat(_check_date(today))
    cutoff = (today - _dt.timedelta(days=int(keep_days))).isoformat()
    hist = os.path.join(os.fspath(db_path), HIST_DIR)
    removed = []
    with _translate_os(hist):
        cleanup_temp(db_path)
        old = [p for p in _list_parts(hist) if p[1] < cutoff and shard in (None, p[3])]
        for path, *_ in old:
            trash = os.path.join(hist, f"{TRASH_PREFIX}{os.getpid()}-{secrets.token_hex(6)}")
            os.rename(path, trash)
            removed.append(path)
        if removed:
            _fsync_dir(hist)  # the renames are durable before anything is deleted
            for d in sorted({os.path.dirname(p) for p in removed}):
                for empty in (d, os.path.dirname(d)):  # <date>/<table>, then <date>
                    try:
                        os.rmdir(empty)
                    except OSError:
                        pass
            cleanup_temp(db_path)
    return removed


__all__ = [
    "HistoryExists",
    "HistoryStore",
    "Partition",
    "write_partition",
    "read_meta",
    "verify_partition",
    "verify_history",
    "cleanup_temp",
    "apply_retention",
    "date_of_ts",
    "column_dtypes",
    "part_name",
]
