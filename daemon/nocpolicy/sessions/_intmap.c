/* IntMap in C: the live session table's int -> int index (sessions/intmap.py), same layout.
 *
 * Open addressing with linear probing over two arrays: keys (uint64_t, or uint32_t for a
 * "narrow" map of IPv4 keys) and values (int32_t, -1 marks an empty slot). Fibonacci hashing
 * (the high bits of key * 0x9E3779B97F4A7C15), at most 60 % full (the map doubles before the
 * entry that would pass it), backward-shift deletion (no tombstones). The Python class
 * PyIntMap in intmap.py is the reference and the fallback: the same rules, the same slot of
 * every entry, so items() lists them in the same order. Issue 15: the pure-Python probe loops
 * were ~10 % of the accounting ingest path; this type keeps the memory (12 or 8 bytes a slot)
 * and takes the interpreter out of the probes.
 *
 * Keys: ints 0 <= key < 2**64 (narrow: < 2**32); values: ints 0 <= value < 2**31. Storing an
 * out-of-range key or value raises OverflowError and changes nothing; looking up an
 * out-of-range int finds nothing (as in the Python class). Memory: PyMem (seen by tracemalloc).
 * The GIL is held throughout; no Python code runs while the arrays are being changed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#define GOLDEN 0x9E3779B97F4A7C15ULL
#define EMPTY (-1)
#define MAX_LOAD 0.6
#define MIN_BITS 3
#define MAX_BITS 40          /* 2**40 slots: far past any memory; bounds the capacity parse */

typedef struct {
    PyObject_HEAD
    void *keys;              /* uint64_t[size] (wide) or uint32_t[size] (narrow) */
    int32_t *vals;           /* EMPTY where the slot is free */
    Py_ssize_t n;            /* entries */
    Py_ssize_t limit;        /* grow when n reaches it: int(size * MAX_LOAD) */
    Py_ssize_t mask;         /* size - 1 (exposed read-only as _mask for the tests) */
    int bits, shift;         /* size == 1 << bits, shift == 64 - bits */
    int wide;
} IntMap;

static inline uint64_t key_at(const IntMap *m, Py_ssize_t i)
{
    return m->wide ? ((uint64_t *)m->keys)[i] : ((uint32_t *)m->keys)[i];
}

static inline void set_key(IntMap *m, Py_ssize_t i, uint64_t k)
{
    if (m->wide)
        ((uint64_t *)m->keys)[i] = k;
    else
        ((uint32_t *)m->keys)[i] = (uint32_t)k;
}

static inline Py_ssize_t home(const IntMap *m, uint64_t k)
{
    return (Py_ssize_t)((k * GOLDEN) >> m->shift);
}

/* Smallest bits with (1 << bits) * MAX_LOAD >= capacity, as PyIntMap._bits_for. */
static int bits_for(Py_ssize_t capacity)
{
    int bits = MIN_BITS;
    while ((double)((uint64_t)1 << bits) * MAX_LOAD < (double)capacity) {
        if (++bits > MAX_BITS) {
            PyErr_Format(PyExc_OverflowError, "IntMap capacity %zd is too large", capacity);
            return -1;
        }
    }
    return bits;
}

/* New, empty arrays of 2**bits slots into *keys and *vals; -1 with MemoryError set. */
static int alloc_arrays(int wide, int bits, void **keys, int32_t **vals)
{
    size_t size = (size_t)1 << bits;
    *keys = PyMem_Calloc(size, wide ? sizeof(uint64_t) : sizeof(uint32_t));
    *vals = PyMem_Malloc(size * sizeof(int32_t));
    if (*keys == NULL || *vals == NULL) {
        PyMem_Free(*keys);
        PyMem_Free(*vals);
        PyErr_NoMemory();
        return -1;
    }
    memset(*vals, 0xff, size * sizeof(int32_t));       /* every slot EMPTY (-1) */
    return 0;
}

static void set_geometry(IntMap *m, int bits)
{
    Py_ssize_t size = (Py_ssize_t)1 << bits;
    m->bits = bits;
    m->shift = 64 - bits;
    m->mask = size - 1;
    m->limit = (Py_ssize_t)((double)size * MAX_LOAD);
}

/* Move every entry into new arrays of 2**bits slots. On MemoryError the map is unchanged. */
static int rehash(IntMap *m, int bits)
{
    void *old_keys = m->keys;
    int32_t *old_vals = m->vals;
    Py_ssize_t old_size = m->mask + 1;
    if (alloc_arrays(m->wide, bits, &m->keys, &m->vals) < 0) {
        m->keys = old_keys;
        m->vals = old_vals;
        return -1;
    }
    set_geometry(m, bits);
    for (Py_ssize_t j = 0; j < old_size; j++) {
        if (old_vals[j] == EMPTY)
            continue;
        uint64_t k = m->wide ? ((uint64_t *)old_keys)[j] : ((uint32_t *)old_keys)[j];
        Py_ssize_t i = home(m, k);
        while (m->vals[i] != EMPTY)          /* keys are distinct: only look for a free slot */
            i = (i + 1) & m->mask;
        set_key(m, i, k);
        m->vals[i] = old_vals[j];
    }
    PyMem_Free(old_keys);
    PyMem_Free(old_vals);
    return 0;
}

/* A key argument. 1: *out set; 0: an int out of range (absent from any map; no error set);
 * -1: not an int (TypeError set). */
static int parse_key(const IntMap *m, PyObject *obj, uint64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "IntMap key must be int, not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long k = PyLong_AsUnsignedLongLong(obj);
    if (k == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    if (!m->wide && k > UINT32_MAX)
        return 0;
    *out = k;
    return 1;
}

/* A key to store: out of range is an OverflowError. */
static int store_key(const IntMap *m, PyObject *obj, uint64_t *out)
{
    int r = parse_key(m, obj, out);
    if (r == 0)
        PyErr_Format(PyExc_OverflowError, "IntMap key out of range (0 <= key < 2**%d)",
                     m->wide ? 64 : 32);
    return r > 0 ? 0 : -1;
}

static int store_value(PyObject *obj, int32_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "IntMap value must be int, not %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        PyErr_Clear();
    else if (v >= 0 && v <= INT32_MAX) {
        *out = (int32_t)v;
        return 0;
    }
    PyErr_SetString(PyExc_OverflowError, "IntMap value out of range (0 <= value < 2**31)");
    return -1;
}

/* The slot holding k, or the empty slot where the probe for k ends. */
static inline Py_ssize_t probe(const IntMap *m, uint64_t k)
{
    Py_ssize_t i = home(m, k);
    while (m->vals[i] != EMPTY && key_at(m, i) != k)
        i = (i + 1) & m->mask;
    return i;
}

/* Slot for a new or existing k, growing first if the map is at its limit; -1 on error. */
static Py_ssize_t slot_for_store(IntMap *m, uint64_t k)
{
    if (m->n >= m->limit && rehash(m, m->bits + 1) < 0)
        return -1;
    return probe(m, k);
}

/* -- the Python interface ------------------------------------------------------------ */

static int nargs_ok(const char *name, Py_ssize_t nargs, Py_ssize_t lo, Py_ssize_t hi)
{
    if (nargs >= lo && nargs <= hi)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s expected %zd to %zd arguments, got %zd", name, lo, hi, nargs);
    return 0;
}

static PyObject *IntMap_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "wide", NULL};
    Py_ssize_t capacity = 8;
    int wide = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n$p:IntMap", kwlist, &capacity, &wide))
        return NULL;
    int bits = bits_for(capacity);
    if (bits < 0)
        return NULL;
    IntMap *m = (IntMap *)type->tp_alloc(type, 0);
    if (m == NULL)
        return NULL;
    m->wide = wide;
    m->n = 0;
    if (alloc_arrays(wide, bits, &m->keys, &m->vals) < 0) {
        m->keys = NULL;
        m->vals = NULL;
        Py_DECREF(m);
        return NULL;
    }
    set_geometry(m, bits);
    return (PyObject *)m;
}

static void IntMap_dealloc(IntMap *m)
{
    PyMem_Free(m->keys);
    PyMem_Free(m->vals);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *IntMap_reserve(IntMap *m, PyObject *arg)
{
    Py_ssize_t capacity = PyLong_AsSsize_t(arg);
    if (capacity == -1 && PyErr_Occurred())
        return NULL;
    int bits = bits_for(capacity);
    if (bits < 0 || (bits > m->bits && rehash(m, bits) < 0))
        return NULL;
    Py_RETURN_NONE;
}

static Py_ssize_t IntMap_len(IntMap *m)
{
    return m->n;
}

/* The value of key, or a new reference to dflt. */
static PyObject *lookup(IntMap *m, PyObject *key, PyObject *dflt)
{
    uint64_t k;
    int r = parse_key(m, key, &k);
    if (r < 0)
        return NULL;
    if (r > 0) {
        Py_ssize_t i = probe(m, k);
        if (m->vals[i] != EMPTY)
            return PyLong_FromLong(m->vals[i]);
    }
    return Py_NewRef(dflt);
}

static PyObject *IntMap_get(IntMap *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!nargs_ok("get", nargs, 1, 2))
        return NULL;
    return lookup(m, args[0], nargs > 1 ? args[1] : Py_None);
}

static int IntMap_contains(IntMap *m, PyObject *key)
{
    uint64_t k;
    int r = parse_key(m, key, &k);
    if (r <= 0)
        return r;
    return m->vals[probe(m, k)] != EMPTY;
}

static int IntMap_ass_subscript(IntMap *m, PyObject *key, PyObject *value)
{
    uint64_t k;
    int32_t v;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "IntMap does not support item deletion (use pop)");
        return -1;
    }
    if (store_key(m, key, &k) < 0 || store_value(value, &v) < 0)
        return -1;
    Py_ssize_t i = slot_for_store(m, k);
    if (i < 0)
        return -1;
    if (m->vals[i] == EMPTY) {
        m->n++;
        set_key(m, i, k);
    }
    m->vals[i] = v;
    return 0;
}

/* add(key, value): map key to value unless it is mapped; the value it had, or None. */
static PyObject *IntMap_add(IntMap *m, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t k;
    int32_t v;
    if (!nargs_ok("add", nargs, 2, 2))
        return NULL;
    if (store_key(m, args[0], &k) < 0 || store_value(args[1], &v) < 0)
        return NULL;
    Py_ssize_t i = slot_for_store(m, k);
    if (i < 0)
        return NULL;
    if (m->vals[i] != EMPTY)
        return PyLong_FromLong(m->vals[i]);
    m->n++;
    set_key(m, i, k);
    m->vals[i] = v;
    Py_RETURN_NONE;
}

/* Empty slot i, then shift back the entries after it that probed past it (their home is not
 * cyclically in (i, j]), so every probe still reaches its key before an empty slot. */
static void delete_slot(IntMap *m, Py_ssize_t i)
{
    Py_ssize_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        if (m->vals[j] == EMPTY)
            break;
        Py_ssize_t h = home(m, key_at(m, j));
        if ((i < j && i < h && h <= j) || (i > j && (h > i || h <= j)))
            continue;                        /* its home lies between i and j: it stays */
        set_key(m, i, key_at(m, j));
        m->vals[i] = m->vals[j];
        i = j;
    }
    m->vals[i] = EMPTY;
    m->n--;
}

static PyObject *IntMap_pop(IntMap *m, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t k;
    if (!nargs_ok("pop", nargs, 1, 2))
        return NULL;
    int r = parse_key(m, args[0], &k);
    if (r < 0)
        return NULL;
    if (r > 0) {
        Py_ssize_t i = probe(m, k);
        int32_t v = m->vals[i];
        if (v != EMPTY) {
            delete_slot(m, i);
            return PyLong_FromLong(v);
        }
    }
    return Py_NewRef(nargs > 1 ? args[1] : Py_None);
}

/* items(): a list of (key, value) tuples in slot order. */
static PyObject *IntMap_items(IntMap *m, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(m->n);
    if (out == NULL)
        return NULL;
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i <= m->mask && n < m->n; i++) {
        if (m->vals[i] == EMPTY)
            continue;
        PyObject *pair = Py_BuildValue("(Kl)", (unsigned long long)key_at(m, i), (long)m->vals[i]);
        if (pair == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, n++, pair);
    }
    return out;
}

static PyObject *IntMap_sizeof(IntMap *m, PyObject *Py_UNUSED(ignored))
{
    size_t slot = (m->wide ? sizeof(uint64_t) : sizeof(uint32_t)) + sizeof(int32_t);
    return PyLong_FromSize_t(sizeof(IntMap) + (size_t)(m->mask + 1) * slot);
}

static PyMethodDef IntMap_methods[] = {
    {"get", (PyCFunction)(void (*)(void))IntMap_get, METH_FASTCALL,
     "get(key, default=None): the value of key, or default."},
    {"add", (PyCFunction)(void (*)(void))IntMap_add, METH_FASTCALL,
     "add(key, value): map key to value unless it is mapped; returns the value it had (None: added)."},
    {"pop", (PyCFunction)(void (*)(void))IntMap_pop, METH_FASTCALL,
     "pop(key, default=None): remove key; its value, or default."},
    {"reserve", (PyCFunction)IntMap_reserve, METH_O,
     "reserve(capacity): room for capacity entries without growing (one allocation)."},
    {"items", (PyCFunction)IntMap_items, METH_NOARGS, "items(): a list of (key, value) pairs."},
    {"__sizeof__", (PyCFunction)IntMap_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}
};

static PyMemberDef IntMap_members[] = {
    {"_mask", T_PYSSIZET, offsetof(IntMap, mask), READONLY, "slots - 1"},
    {NULL, 0, 0, 0, NULL}
};

static PyMappingMethods IntMap_as_mapping = {
    .mp_length = (lenfunc)IntMap_len,
    .mp_ass_subscript = (objobjargproc)IntMap_ass_subscript,
};

static PySequenceMethods IntMap_as_sequence = {
    .sq_contains = (objobjproc)IntMap_contains,
};

static PyTypeObject IntMapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nocpolicy.sessions._intmap.IntMap",
    .tp_doc = "IntMap(capacity=8, *, wide=True): a compact int -> int map (see intmap.py).",
    .tp_basicsize = sizeof(IntMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = IntMap_new,
    .tp_dealloc = (destructor)IntMap_dealloc,
    .tp_methods = IntMap_methods,
    .tp_members = IntMap_members,
    .tp_as_mapping = &IntMap_as_mapping,
    .tp_as_sequence = &IntMap_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_intmap",
    "The live session table's int -> int map in C (sessions/intmap.py has the Python one).",
    -1, NULL, NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC PyInit__intmap(void)
{
    if (PyType_Ready(&IntMapType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod == NULL)
        return NULL;
    if (PyModule_AddObjectRef(mod, "IntMap", (PyObject *)&IntMapType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
