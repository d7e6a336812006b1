"""Sources of data rows read chunk by chunk: in-memory arrays, ``.npy`` files (by file offsets,
memory maps included) and Parquet files (by row batches).

:func:`open_source` turns what a user gives into a :class:`Source`; the out-of-core EM of
:mod:`bayesgmm.streaming` reads its passes from one, so memory is bounded by a chunk.
"""

from __future__ import annotations

import collections.abc
import os

import numpy as np

from .params import check_data

__all__ = ["PARQUET_SUFFIXES", "ArraySource", "NpySource", "ParquetSource", "Source", "open_source"]

#: File name endings read as Parquet.
PARQUET_SUFFIXES = (".parquet", ".pq")


# ----------------------------------------------------------------------------------------------
# Sources: rows of a data matrix, chunk by chunk
# ----------------------------------------------------------------------------------------------
class Source:
    """Rows of an (N, D) matrix read in chunks (storage dtype, selected columns).

    ``chunks(batch_size, order)`` yields ``(index, start_row, rows)``; ``rows`` may be a view of a
    buffer that the next step of the iteration overwrites. ``random_access`` sources read the
    chunks in any ``order``; the others read them in file order.
    """

    name: str
    num_rows: int
    num_features: int
    dtype: np.dtype
    feature_names: tuple
    random_access: bool = True

    def num_chunks(self, batch_size: int) -> int:
        """Chunks of ``batch_size`` rows that hold all the rows (the last may be partial).

        Parameters
        ----------
        batch_size : int
            Rows per chunk.

        Returns
        -------
        int
            ``ceil(num_rows / batch_size)``.
        """
        return -(-self.num_rows // batch_size)


def _select_columns(columns, num_all: int, name: str):
    """Integer column indices of an array source (None: every column)."""
    if columns is None:
        return None
    cols = list(columns) if not isinstance(columns, (int, np.integer, str)) else [columns]
    if not cols or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in cols):
        raise ValueError(
            f"columns for an array or .npy source must be a non-empty list of integer column indices, got {columns!r}."
        )
    bad = [int(c) for c in cols if not -num_all <= c < num_all]
    if bad:
        raise ValueError(f"{name} has {num_all} column(s) (0 to {num_all - 1}, or -{num_all} to -1 from the end); "
                         f"unknown column(s) {bad}.")
    picked = [int(c) % num_all for c in cols]
    twice = sorted({c for c in picked if picked.count(c) > 1})
    if twice:  # a feature fitted twice: its two copies make every covariance singular
        raise ValueError(f"columns names column(s) {twice} of {name} more than once; give each column once.")
    return np.asarray(picked)


def _storage_dtype(dtype, name: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.fields is not None or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise ValueError(f"{name} must hold numbers, got dtype {dtype}; convert it to float32 or float64.")
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got complex dtype {dtype}.")
    return dtype


class ArraySource(Source):
    """An in-memory array (or an ``np.memmap``: the OS then counts the pages read towards RSS).

    Parameters
    ----------
    arr : np.ndarray (N, D) or (N,)
        The data, numeric, kept as given (a 1-D array is one feature).
    columns : list of int or None
        Column indices to read (negative ones count from the end); None: every column.
    name : str
        How error messages name the source.
    feature_names : sequence of str, optional
        One name per selected column; default ``x<j>`` with ``j`` the column's index in ``arr``.
    """

    def __init__(self, arr: np.ndarray, columns, name: str = "source", feature_names=None):
        self.name = name
        self.dtype = _storage_dtype(arr.dtype, name)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D array of shape (n_obs, n_features) or a 1-D array of one feature, "
                f"got {arr.ndim} dimensions with shape {arr.shape}."
            )
        self.cols = _select_columns(columns, arr.shape[1], name)
        self.arr = arr
        self.num_rows = arr.shape[0]
        self.num_features = arr.shape[1] if self.cols is None else len(self.cols)
        if feature_names is None:
            idx = range(arr.shape[1]) if self.cols is None else self.cols
            feature_names = tuple(f"x{j}" for j in idx)
        self.feature_names = tuple(feature_names)

    def chunks(self, batch_size, order):
        """The chunks of ``batch_size`` rows, in ``order``: slices of the array (copies when
        ``columns`` selects some).

        Parameters
        ----------
        batch_size : int
            Rows per chunk (the last chunk may be shorter).
        order : iterable of int
            Chunk indices, in ``0 .. num_chunks(batch_size) - 1``, in the order to read them.

        Yields
        ------
        tuple
            ``(index, start_row, rows)``, ``rows`` of shape (m, num_features) in the storage
            dtype.
        """
        for i in order:
            start = int(i) * batch_size
            rows = self.arr[start : start + batch_size]
            yield int(i), start, rows if self.cols is None else rows[:, self.cols]


def _identity(stat: os.stat_result) -> tuple:
    """What tells a file's contents changed: its inode (a file put in its place), size and
    modification time (one written over in place)."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _check_unchanged(name: str, identity: tuple, stat: os.stat_result, *, held_open: bool = False) -> None:
    """Refuse a file whose identity changed since it was opened; ``held_open``: the source reads
    through a handle it keeps, so another file put in its place is never read (only the same
    file written over counts)."""
    if held_open and (stat.st_dev, stat.st_ino) != identity[:2]:
        return
    if _identity(stat) != identity:
        raise ValueError(
            f"{name} changed while fitting (another file in its place, or written over since the fit opened it): "
            "the passes would mix two data sets. Fit a copy that nothing writes to."
        )


class NpySource(Source):
    """A ``.npy`` file: header parsed with ``np.lib.format``, rows read with seek + ``readinto``.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file holding a 2-D numeric array in C order (as ``np.save`` writes it).
    columns : list of int or None
        Column indices to read (negative ones count from the end); None: every column.
    """

    def __init__(self, path: str, columns):
        self.path = path
        self.name = repr(str(path))
        with open(path, "rb") as f:
            self.identity = _identity(os.fstat(f.fileno()))
            try:
                version = np.lib.format.read_magic(f)
                reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in reader:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran_order, dtype = reader[version](f)
            except ValueError as err:
                raise ValueError(f"{self.name} is not a readable .npy file ({err}); write it with np.save.") from None
            self.offset = f.tell()
        self.dtype = _storage_dtype(dtype, self.name)
        if len(shape) != 2:
            raise ValueError(
                f"{self.name} holds an array of shape {shape}; streaming needs a 2-D array (n_obs, "
                "n_features): save x.reshape(len(x), -1)."
            )
        if fortran_order and shape[1] > 1:
            raise ValueError(
                f"{self.name} is stored in Fortran (column-major) order, so rows are not contiguous; "
                "re-save it with np.save(path, np.ascontiguousarray(x))."
            )
        self.shape = tuple(int(s) for s in shape)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        size = os.path.getsize(path)
        if size < self.offset + self.shape[0] * self.row_bytes:
            raise ValueError(f"{self.name} is truncated: its header promises shape {shape} but the file has {size} bytes.")
        self.cols = _select_columns(columns, self.shape[1], self.name)
        self.num_rows = self.shape[0]
        self.num_features = self.shape[1] if self.cols is None else len(self.cols)
        idx = range(self.shape[1]) if self.cols is None else self.cols
        self.feature_names = tuple(f"x{j}" for j in idx)

    def chunks(self, batch_size, order):
        """The chunks of ``batch_size`` rows, in ``order``, each read from the file into one buffer.

        Parameters
        ----------
        batch_size : int
            Rows per chunk (the last chunk may be shorter).
        order : iterable of int
            Chunk indices, in ``0 .. num_chunks(batch_size) - 1``, in the order to read them.

        Yields
        ------
        tuple
            ``(index, start_row, rows)``, ``rows`` of shape (m, num_features) in the storage
            dtype: a view of the buffer, overwritten by the next chunk.
        """
        raw = np.empty((batch_size, self.shape[1]), self.dtype)
        flat = raw.reshape(-1).view(np.uint8)
        with open(self.path, "rb", buffering=0) as f:
            _check_unchanged(self.name, self.identity, os.fstat(f.fileno()))
            for i in order:
                start = int(i) * batch_size
                m = min(batch_size, self.num_rows - start)
                f.seek(self.offset + start * self.row_bytes)
                want = m * self.row_bytes
                got = f.readinto(memoryview(flat)[:want])
                if got != want:
                    raise ValueError(f"{self.name}: short read at row {start} (the file changed while fitting?).")
                rows = raw[:m]
                yield int(i), start, rows if self.cols is None else rows[:, self.cols]
            _check_unchanged(self.name, self.identity, os.fstat(f.fileno()))  # written over during the pass


def _import_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "Reading Parquet files needs pyarrow: pip install pyarrow (or convert the data to a .npy file)."
        ) from None
    return pq


class ParquetSource(Source):
    """A Parquet file read with ``pyarrow.parquet.ParquetFile.iter_batches`` (file order only).

    Parameters
    ----------
    path : str or path-like
        A Parquet file (needs ``pyarrow``).
    columns : str, list of str or None
        Names of the numeric columns to read; None: every column (all must then be numeric) except
        the row labels of a DataFrame that pandas stored (which pandas reads back as the index).
        float32 when every column read is float32, float64 otherwise.
    """

    random_access = False

    def __init__(self, path: str, columns):
        pq = _import_parquet()
        import pyarrow as pa
        self.path = path
        self.name = repr(str(path))
        try:
            self.identity = _identity(os.stat(path))
            self.file = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises its own ArrowInvalid
            raise ValueError(f"{self.name} is not a readable Parquet file ({err}).") from None
        schema = self.file.schema_arrow
        names = list(schema.names)
        if columns is None:
            # a DataFrame's row labels that pandas stored as columns (``__index_level_0__`` or the
            # index's name; a RangeIndex is stored as metadata only): pandas reads them back as
            # the index, not as data, and so do we
            index = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
            cols = [c for c in names if c not in index]
            if not cols:
                raise ValueError(f"{self.name} holds no column besides its pandas index {index}.")
        else:
            cols = [columns] if isinstance(columns, str) else list(columns)
            if not cols or not all(isinstance(c, str) for c in cols):
                raise ValueError(f"columns for a Parquet source must be a non-empty list of column names, got {columns!r}.")
            unknown = [c for c in cols if c not in names]
            if unknown:
                raise ValueError(f"{self.name} has no column(s) {unknown}; its columns are {names}.")
            repeated = sorted({c for c in cols if cols.count(c) > 1})
            if repeated:
                raise ValueError(f"columns names column(s) {repeated} of {self.name} more than once; give each column once.")
        types = {c: schema.field(c).type for c in cols}
        # as a DataFrame's columns in memory (check_data): booleans are not numbers to fit a Gaussian to
        bad = [c for c, t in types.items() if not (pa.types.is_integer(t) or pa.types.is_floating(t))]
        if bad:
            raise ValueError(f"{self.name} has non-numeric column(s) {bad}; pass columns=[...] with numeric columns "
                             "only, or encode them as numbers.")
        self.cols = cols
        self.dtype = np.dtype(np.float32) if all(t == pa.float32() for t in types.values()) else np.dtype(np.float64)
        self.num_rows = int(self.file.metadata.num_rows)
        self.num_features = len(cols)
        self.feature_names = tuple(cols)

    def chunks(self, batch_size, order):
        """The chunks of ``batch_size`` rows in file order, gathered from the file's row batches.

        Parameters
        ----------
        batch_size : int
            Rows per chunk (the last chunk may be shorter).
        order : iterable of int
            Ignored: a Parquet file is read in file order (``random_access`` is False).

        Yields
        ------
        tuple
            ``(index, start_row, rows)``, ``rows`` of shape (m, num_features) in the storage
            dtype, held in a buffer that the next chunk overwrites.
        """
        del order  # Parquet is read in file order
        buf = np.empty((batch_size, self.num_features), self.dtype)
        fill = start = index = 0
        _check_unchanged(self.name, self.identity, os.stat(self.path), held_open=True)
        batches = self.file.iter_batches(batch_size=batch_size, columns=self.cols)
        while True:
            try:
                batch = next(batches, None)
            except Exception as err:  # pyarrow's own errors (a file cut short: OSError, ArrowInvalid)
                _check_unchanged(self.name, self.identity, os.stat(self.path), held_open=True)
                raise ValueError(f"{self.name} could not be read at row {start + fill} ({err}).") from None
            if batch is None:
                break
            arrays = [batch.column(j).to_numpy(zero_copy_only=False) for j in range(self.num_features)]
            n, pos = batch.num_rows, 0
            while pos < n:
                take = min(batch_size - fill, n - pos)
                for j, a in enumerate(arrays):
                    buf[fill : fill + take, j] = a[pos : pos + take]
                fill, pos = fill + take, pos + take
                if fill == batch_size:
                    yield index, start, buf
                    index, start, fill = index + 1, start + batch_size, 0
        if fill:
            yield index, start, buf[:fill]
        _check_unchanged(self.name, self.identity, os.stat(self.path), held_open=True)  # written over during the pass


def _npy_path_of_memmap(arr) -> str | None:
    """The ``.npy`` file behind a whole-array ``np.memmap`` (``np.load(path, mmap_mode="r")``).

    Reading that file with ``readinto`` keeps RSS bounded, where touching the mapping would count
    every page read towards it. Not for a copy-on-write mapping (``mmap_mode="c"``), whose
    changes in memory are not in the file.
    """
    path = getattr(arr, "filename", None)
    if getattr(arr, "mode", None) not in ("r", "r+", "w+"):  # "c": the file lacks the changes made in memory
        return None
    if not path or not str(path).endswith(".npy") or not arr.flags.c_contiguous:
        return None
    try:
        src = NpySource(path, None)
    except (ValueError, OSError):
        return None
    if src.shape == arr.shape and src.dtype == arr.dtype and getattr(arr, "offset", None) == src.offset:
        return path
    return None


def open_source(source, columns=None, *, missing: str = "error") -> Source:
    """The :class:`Source` for the public ``source`` argument of :func:`fit_em_stream`.

    Parameters
    ----------
    source : array-like, np.memmap, DataFrame, or path to a ``.npy`` or ``.parquet`` file
        The data. A memmap of a whole ``.npy`` file is read from the file (so pages read do not
        count towards RSS); other arrays and DataFrames are validated in memory.
    columns : list, optional
        Columns to read: names for Parquet files and DataFrames, integer indices for arrays
        and ``.npy`` files. Default all.
    missing : {"error", "marginalize"}
        The fit's missing-value policy, for the in-memory validation of array-likes and
        DataFrames (``"marginalize"`` lets NaN entries through).

    Returns
    -------
    Source
        An :class:`NpySource`, :class:`ParquetSource` or :class:`ArraySource`.

    Raises
    ------
    ValueError
        An unsupported file extension, a missing or unreadable file, or unknown columns.
    ImportError
        A Parquet file without pyarrow installed.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in (".npy",) + PARQUET_SUFFIXES:
            raise ValueError(
                f"source file {path!r} must be a .npy or .parquet file (got extension {suffix or 'none'!r}); "
                "save the data with np.save or DataFrame.to_parquet, or pass an array."
            )
        if suffix in PARQUET_SUFFIXES:
            _import_parquet()  # the missing-dependency message comes before the missing-file one
        if os.path.isdir(path):  # a partitioned data set (Spark, pyarrow.dataset): one folder of files
            raise ValueError(
                f"source {path!r} is a folder, not a file: a source is one .npy or .parquet file. Combine a "
                "partitioned data set into one file (pandas.read_parquet(folder).to_parquet(file)), or fit "
                "its files' rows as one array."
            )
        if not os.path.isfile(path):
            raise ValueError(f"source file {path!r} does not exist.")
        return NpySource(path, columns) if suffix == ".npy" else ParquetSource(path, columns)
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        raise ValueError(
            f"source is a list of {len(source)} paths; a source is one .npy or .parquet file (or an array). "
            "Combine the files into one (np.save of their rows stacked, or one DataFrame.to_parquet), or "
            "fit their rows as one array."
        )
    if isinstance(source, np.ma.MaskedArray):  # masked entries are missing values (NaN), never their fill values
        source = np.ma.filled(np.ma.asarray(source, np.float64), np.nan) if np.ma.is_masked(source) else np.ma.getdata(source)
    if isinstance(source, np.memmap):
        path = _npy_path_of_memmap(source)
        if path is not None:
            return NpySource(path, columns)
        return ArraySource(source, columns)
    if isinstance(source, np.ndarray):
        return ArraySource(source, columns)
    if hasattr(source, "columns") and hasattr(source, "dtypes"):  # pandas DataFrame, in memory
        if columns is not None:
            cols = [columns] if isinstance(columns, str) else list(columns)
            unknown = [c for c in cols if c not in source.columns]
            if unknown:
                raise ValueError(f"source has no column(s) {unknown}; its columns are {list(source.columns)}.")
            source = source[cols]
        arr, names = check_data(source, name="source", allow_constant=True, missing=missing)
        return ArraySource(arr, None, feature_names=names)
    if isinstance(source, collections.abc.Iterator):  # read once, so no second pass: not a source
        raise ValueError(
            f"source is a {type(source).__name__} (an iterator of chunks), which streaming EM cannot read again on "
            "every pass; save the chunks to a .npy file (np.lib.format.open_memmap) or a Parquet file and pass its path, "
            "or pass an array."
        )
    arr, names = check_data(source, name="source", allow_constant=True, missing=missing)
    return ArraySource(arr, columns)


