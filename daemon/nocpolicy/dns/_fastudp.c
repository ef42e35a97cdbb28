/* The DNS guard's UDP listener loop in C: recvmmsg, the per-source rate limit, the table of
 * blocked answers and the answer cache's hot table, replies through sendmmsg.
 *
 * This is the Python loop of mmsg.BatchedUdp._readable plus the inlined fast paths of
 * engine.Engine.udp_handler, moved out of the interpreter (issue 19: the per-datagram
 * interpreter work, not the DNS work, is what kept the guard below dnsdist). It owns no
 * state of its own: every table it reads or updates is the Python object the engine owns
 * (the same dicts, lists and counters), so the pure-Python path and this one are the same
 * decisions. Anything that is not a hit in one of those tables goes to the engine's Python
 * ``rest`` with what was worked out so far. Built optionally (setup.py); mmsg.py falls back
 * to the Python loop when it is missing (``--dns-io batched``).
 *
 * Python state is read again when an attribute of its owners changed (current(): only Python
 * code can swap the engine's tables; the GIL is held throughout, as in the Python loop).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64
#define RX_SLOT 4160
#define TX_SLOT 4096
#define NAME 28
#define MAX_ROUNDS 8
#define NBUCKETS 32
#define NHOOKS 20
#define FLUSH_EVERY 0.25     /* seconds between adds of the C counters to the Python ones */

enum {
    H_ENGINE, H_RL_KEYS, H_RL_KEY, H_RL_COUNTS, H_RL_BLOCKED, H_RL_OVER, H_LIMITER, H_REST,
    H_SENDTO, H_STATS, H_RCODES, H_HIST_LOCAL, H_HIST_CACHE, H_BUCKETS, H_OUTSIDE, H_MISS,
    H_FAILED, H_SAMPLES, H_MASK, H_CACHE_LAYOUT
};

typedef struct {
    long long counts[NBUCKETS];
    double total;
    int used;
} LocalHist;

typedef struct {
    PyObject_HEAD
    int fd, family, closed, ip_off, ip_len, namelen, batch;
    /* receive ring */
    struct mmsghdr rx[BATCH];
    struct iovec rxiov[BATCH];
    unsigned char rxname[BATCH][NAME];
    unsigned char *rxbuf;
    /* send ring (answers found here; the Python sendto has its own ring) */
    struct mmsghdr tx[BATCH];
    struct iovec txiov[BATCH];
    unsigned char txname[BATCH][NAME];
    unsigned char *txbuf;
    int ntx;
    /* the transport's Python side */
    PyObject *on_datagram, *hosts, *muted, *host_of, *on_error, *group, *group_flush;
    /* the engine's fast paths (None: every datagram goes to on_datagram) */
    PyObject *hooks;
    double buckets[NBUCKETS];
    int nbuckets;
    /* view of the engine's state; valid == 0 after any call into Python and between batches,
     * when it is checked against the versions of the owners' attribute dicts (see current()) */
    int valid, loaded;
    PyObject *e_dict, *l_dict, *a_dict;
    unsigned long long v_e, v_l, v_a;
    int called;          /* this batch called into Python: its sendto rings may hold datagrams */
    int marked;          /* group.scheduled set by this batch (enter_python) */
    PyObject *s_hostcache, *s_answers, *s_acache, *s_subs, *s_suspended, *s_gen, *s_dirty, *s_zones, *s_allowed, *s_probes;
    PyObject *s_hot, *s_sgen;
    double s_until;
    long long s_qps, s_blocked_qps;
    /* counters added to the Python ones every FLUSH_EVERY and on flush() (engine.drain) */
    double flushed_at;
    long long n_udp, rcodes[16], hits;
    PyObject *hits_ac;
    LocalHist h_local, h_cache;
} Listener;

static PyObject *S_hostcache, *S_answers, *S_acache, *S_subs, *S_suspended, *S_gen, *S_dirty,
    *S_hot, *S_until, *S_sgen, *S_qps, *S_blocked_qps, *S_resp, *S_n, *S_hosts, *S_rcode,
    *S_refuse, *S_restamp, *S_warm_wire, *S_udp, *S_counts, *S_total, *S_hits, *S_scheduled,
    *S_counters, *S_send_drops, *S_queries, *S_blocked, *S_flush, *S_zones, *S_allowed, *S_clean, *S_room,
    *S_qhdr, *S_hdr, *S_rest, *S_host, *S_labels, *S_count, *S_dotparent, *S_probes, *S_d, *S_gen_cname, *S_s, *S_s4;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);      /* time.perf_counter() on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* -- the per-batch view ------------------------------------------------------------------ */

static void drop_state(Listener *self)
{
    Py_CLEAR(self->s_hostcache); Py_CLEAR(self->s_answers); Py_CLEAR(self->s_acache);
    Py_CLEAR(self->s_subs); Py_CLEAR(self->s_suspended); Py_CLEAR(self->s_gen);
    Py_CLEAR(self->s_dirty); Py_CLEAR(self->s_hot); Py_CLEAR(self->s_sgen);
    Py_CLEAR(self->s_zones); Py_CLEAR(self->s_allowed); Py_CLEAR(self->s_probes);
    Py_CLEAR(self->a_dict);
    self->valid = self->loaded = 0;
}

/* Whether the view loaded last is still the engine's: no attribute of the engine, its rate
 * limiter or its answer cache was set since (PEP 509: a dict's version changes with every
 * change to it; the tables' own contents are read live and need no check). Python code is
 * the only thing that swaps a table, and it runs between batches (timers, tasks) as well as
 * in calls from here; re-reading a dozen attributes per batch was a tenth of the loop's time
 * at one datagram per wake-up. Without the version tag (Python 3.12 deprecates it) the view
 * is read again each time. */
static int current(Listener *self)
{
#if PY_VERSION_HEX < 0x030C0000
    return self->loaded && self->e_dict != NULL && self->l_dict != NULL &&
           ((PyDictObject *)self->e_dict)->ma_version_tag == self->v_e &&
           ((PyDictObject *)self->l_dict)->ma_version_tag == self->v_l &&
           (self->a_dict == NULL || ((PyDictObject *)self->a_dict)->ma_version_tag == self->v_a);
#else
    return 0;
#endif
}

/* Note the versions of the dicts the view was read from (nothing to note without them). */
static void note_versions(Listener *self)
{
#if PY_VERSION_HEX < 0x030C0000
    PyObject *engine = PyTuple_GET_ITEM(self->hooks, H_ENGINE), *lim = PyTuple_GET_ITEM(self->hooks, H_LIMITER);
    if (self->e_dict == NULL && !(self->e_dict = PyObject_GenericGetDict(engine, NULL)))
        PyErr_Clear();
    if (self->l_dict == NULL && !(self->l_dict = PyObject_GenericGetDict(lim, NULL)))
        PyErr_Clear();
    if (self->s_acache != Py_None && !(self->a_dict = PyObject_GenericGetDict(self->s_acache, NULL)))
        PyErr_Clear();
    if (self->e_dict == NULL || self->l_dict == NULL || (self->s_acache != Py_None && self->a_dict == NULL)
        || !PyDict_Check(self->e_dict) || !PyDict_Check(self->l_dict)
        || (self->a_dict != NULL && !PyDict_Check(self->a_dict)))
        return;                                  /* not plain instance dicts: read each time */
    self->v_e = ((PyDictObject *)self->e_dict)->ma_version_tag;
    self->v_l = ((PyDictObject *)self->l_dict)->ma_version_tag;
    self->v_a = self->a_dict ? ((PyDictObject *)self->a_dict)->ma_version_tag : 0;
    self->loaded = 1;
#endif
}

static int attr_ll(PyObject *o, PyObject *name, long long *out)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int load_state(Listener *self)
{
    PyObject *engine = PyTuple_GET_ITEM(self->hooks, H_ENGINE);
    PyObject *lim = PyTuple_GET_ITEM(self->hooks, H_LIMITER);
    if (current(self)) {
        self->valid = 1;
        return 0;
    }
    drop_state(self);
    if (!(self->s_hostcache = PyObject_GetAttr(engine, S_hostcache)) ||
        !(self->s_answers = PyObject_GetAttr(engine, S_answers)) ||
        !(self->s_acache = PyObject_GetAttr(engine, S_acache)) ||
        !(self->s_subs = PyObject_GetAttr(engine, S_subs)) ||
        !(self->s_suspended = PyObject_GetAttr(engine, S_suspended)) ||
        !(self->s_gen = PyObject_GetAttr(engine, S_gen)) ||
        !(self->s_dirty = PyObject_GetAttr(engine, S_dirty)) ||
        !(self->s_zones = PyObject_GetAttr(engine, S_zones)) ||
        !(self->s_allowed = PyObject_GetAttr(engine, S_allowed)) ||
        !(self->s_probes = PyObject_GetAttr(engine, S_probes)))
        return -1;
    if (!PyDict_Check(self->s_hostcache) || !PyDict_Check(self->s_answers) || !PyDict_Check(self->s_subs) ||
        !PyDict_Check(self->s_zones) || !PyDict_Check(self->s_allowed) ||
        !PyTuple_Check(self->s_probes) || PyTuple_GET_SIZE(self->s_probes) < 2 ||
        !PyList_Check(self->s_dirty) || !PyAnySet_Check(self->s_suspended)) {
        PyErr_SetString(PyExc_TypeError, "_fastudp: the engine's tables are not the expected types");
        return -1;
    }
    if (attr_ll(lim, S_qps, &self->s_qps) < 0 || attr_ll(lim, S_blocked_qps, &self->s_blocked_qps) < 0)
        return -1;
    if (self->s_acache != Py_None) {
        PyObject *u;
        if (!(self->s_hot = PyObject_GetAttr(self->s_acache, S_hot)) ||
            !(self->s_sgen = PyObject_GetAttr(self->s_acache, S_sgen)) ||
            !(u = PyObject_GetAttr(self->s_acache, S_until)))
            return -1;
        self->s_until = PyFloat_AsDouble(u);
        Py_DECREF(u);
        if (self->s_until == -1.0 && PyErr_Occurred())
            return -1;
        if (!PyDict_Check(self->s_hot)) {
            PyErr_SetString(PyExc_TypeError, "_fastudp: the answer cache's hot table is not a dict");
            return -1;
        }
    }
    self->valid = 1;
    note_versions(self);
    return 0;
}

/* -- counters ------------------------------------------------------------------------------ */

static void observe(Listener *self, LocalHist *h, double d)
{
    int i = 0;
    while (i < self->nbuckets && self->buckets[i] < d)     /* bisect_left(BUCKETS, d) */
        i++;
    h->counts[i]++;
    h->total += d;
    h->used = 1;
}

static int add_to_list(PyObject *list, Py_ssize_t i, long long n)
{
    PyObject *old, *inc, *sum;
    if (n == 0)
        return 0;
    if (i >= PyList_GET_SIZE(list))
        return 0;
    old = PyList_GET_ITEM(list, i);
    if (!(inc = PyLong_FromLongLong(n)))
        return -1;
    sum = PyNumber_Add(old, inc);
    Py_DECREF(inc);
    if (sum == NULL)
        return -1;
    PyList_SetItem(list, i, sum);           /* steals sum, drops old */
    return 0;
}

static int add_to_attr(PyObject *o, PyObject *name, PyObject *inc)
{
    PyObject *old = PyObject_GetAttr(o, name), *sum;
    int r;
    if (old == NULL)
        return -1;
    sum = PyNumber_Add(old, inc);
    Py_DECREF(old);
    if (sum == NULL)
        return -1;
    r = PyObject_SetAttr(o, name, sum);
    Py_DECREF(sum);
    return r;
}

static int add_ll_to_attr(PyObject *o, PyObject *name, long long n)
{
    PyObject *inc;
    int r;
    if (n == 0)
        return 0;
    if (!(inc = PyLong_FromLongLong(n)))
        return -1;
    r = add_to_attr(o, name, inc);
    Py_DECREF(inc);
    return r;
}

static int flush_hist(LocalHist *h, PyObject *hist)
{
    PyObject *counts, *tot;
    int i, r = 0;
    if (!h->used)
        return 0;
    if (!(counts = PyObject_GetAttr(hist, S_counts)))
        return -1;
    for (i = 0; i < NBUCKETS && r == 0; i++)
        r = add_to_list(counts, i, h->counts[i]);
    Py_DECREF(counts);
    if (r == 0 && (tot = PyFloat_FromDouble(h->total)) != NULL) {
        r = add_to_attr(hist, S_total, tot);
        Py_DECREF(tot);
    } else if (r == 0) {
        r = -1;
    }
    memset(h, 0, sizeof(*h));
    return r;
}

static int flush_hits(Listener *self)
{
    int r = 0;
    if (self->hits_ac != NULL) {
        r = add_ll_to_attr(self->hits_ac, S_hits, self->hits);
        Py_CLEAR(self->hits_ac);
    }
    self->hits = 0;
    return r;
}

static int flush_counters(Listener *self)
{
    PyObject *h = self->hooks;
    int i, r = 0;
    if (h == Py_None)
        return 0;
    r |= add_ll_to_attr(PyTuple_GET_ITEM(h, H_STATS), S_udp, self->n_udp);
    self->n_udp = 0;
    for (i = 0; i < 16; i++) {
        r |= add_to_list(PyTuple_GET_ITEM(h, H_RCODES), i, self->rcodes[i]);
        self->rcodes[i] = 0;
    }
    r |= flush_hist(&self->h_local, PyTuple_GET_ITEM(h, H_HIST_LOCAL));
    r |= flush_hist(&self->h_cache, PyTuple_GET_ITEM(h, H_HIST_CACHE));
    r |= flush_hits(self);
    return r ? -1 : 0;
}

/* -- sending ------------------------------------------------------------------------------- */

/* Before a call into Python that may send: what it queues on a Python sendto ring waits for
 * this batch's group flush (one sendmmsg per socket) instead of scheduling a flush of its
 * own. Set once per batch, and only in batches that call out (a call that sends without it
 * is still sent, by the flush it schedules). */
static int enter_python(Listener *self)
{
    if (self->marked)
        return 0;
    self->marked = 1;
    return PyObject_SetAttr(self->group, S_scheduled, Py_True);
}

static void send_drops(Listener *self, long long n)
{
    PyObject *c = PyObject_GetAttr(self->group, S_counters);
    if (c == NULL || add_ll_to_attr(c, S_send_drops, n) < 0)
        PyErr_Clear();
    Py_XDECREF(c);
}

static void flush_tx(Listener *self)
{
    int start = 0, count = self->ntx;
    while (start < count) {
        int r = sendmmsg(self->fd, self->tx + start, count - start, MSG_DONTWAIT);
        if (r > 0) {
            start += r;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            send_drops(self, count - start);             /* buffer full: UDP drops */
            break;
        }
        send_drops(self, 1);                             /* this one is lost; go on */
        start++;
    }
    self->ntx = 0;
}

/* The concatenation of n pieces to the datagram's source (``name``): into the send ring, or
 * through the Python sendto when longer than a slot. 0, or -1 with an exception set. */
static int send_parts(Listener *self, const unsigned char **part, const Py_ssize_t *len, int n,
                      const unsigned char *name)
{
    Py_ssize_t total = 0, at = 0;
    unsigned char *out;
    PyObject *big = NULL, *addr, *r;
    int i;
    for (i = 0; i < n; i++)
        total += len[i];
    if (total > TX_SLOT) {                 /* rare: a long answer, through the Python sendto */
        if (!(big = PyBytes_FromStringAndSize(NULL, total)))
            return -1;
        out = (unsigned char *)PyBytes_AS_STRING(big);
    } else {
        out = self->txbuf + (size_t)self->ntx * TX_SLOT;
    }
    for (i = 0; i < n; i++) {
        memcpy(out + at, part[i], len[i]);
        at += len[i];
    }
    if (big == NULL) {
        self->txiov[self->ntx].iov_len = total;
        memcpy(self->txname[self->ntx], name, self->namelen);
        if (++self->ntx == self->batch)
            flush_tx(self);
        return 0;
    }
    addr = enter_python(self) < 0 ? NULL : PyBytes_FromStringAndSize((const char *)name, self->namelen);
    r = addr ? PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(self->hooks, H_SENDTO), big, addr, NULL) : NULL;
    Py_DECREF(big);
    Py_XDECREF(addr);
    self->valid = 0;
    self->called = 1;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* data[:2] + body to the datagram's source. 0, or -1 with an exception set. */
static int reply(Listener *self, const unsigned char *id, PyObject *body, const unsigned char *name)
{
    char *b;
    Py_ssize_t n, lens[2];
    const unsigned char *parts[2];
    if (PyBytes_AsStringAndSize(body, &b, &n) < 0)
        return -1;
    parts[0] = id; lens[0] = 2;
    parts[1] = (const unsigned char *)b; lens[1] = n;
    return send_parts(self, parts, lens, 2, name);
}

/* -- the fast paths ------------------------------------------------------------------------ */

typedef struct {
    const unsigned char *buf, *name;
    Py_ssize_t len;
    double t0;
    PyObject *t0obj, *host, *k, *cid, *key, *data, *addr;      /* data, addr: made on demand */
} Dgram;

static PyObject *dg_data(Dgram *g)
{
    if (g->data == NULL)
        g->data = PyBytes_FromStringAndSize((const char *)g->buf, g->len);
    return g->data;
}

static PyObject *dg_addr(Listener *self, Dgram *g)
{
    if (g->addr == NULL)
        g->addr = PyBytes_FromStringAndSize((const char *)g->name, self->namelen);
    return g->addr;
}

/* One more of a counter keyed by k in dict d; the new value, or -1 with an exception. */
static long long bump(PyObject *d, PyObject *k)
{
    PyObject *v = PyDict_GetItemWithError(d, k), *nv;
    long long n = 0;
    if (v != NULL) {
        n = PyLong_AsLongLong(v);
        if (n == -1 && PyErr_Occurred())
            return -1;
    } else if (PyErr_Occurred()) {
        return -1;
    }
    n++;
    if (!(nv = PyLong_FromLongLong(n)))
        return -1;
    if (PyDict_SetItem(d, k, nv) < 0) {
        Py_DECREF(nv);
        return -1;
    }
    Py_DECREF(nv);
    return n;
}

/* The limiter's over(host, n, limit, kind, data, addr, sendto): 1 dropped or slipped, 0 not, -1 error. */
static int over(Listener *self, Dgram *g, long long n, long long limit, PyObject *kind)
{
    PyObject *h = self->hooks, *r, *pn, *pl;
    int t;
    if (!dg_data(g) || !dg_addr(self, g))
        return -1;
    pn = PyLong_FromLongLong(n);
    pl = enter_python(self) < 0 ? NULL : PyLong_FromLongLong(limit);
    r = (pn && pl) ? PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(h, H_RL_OVER), g->host, pn, pl, kind, g->data,
                                                   g->addr, PyTuple_GET_ITEM(h, H_SENDTO), NULL) : NULL;
    Py_XDECREF(pn);
    Py_XDECREF(pl);
    self->valid = 0;
    self->called = 1;
    if (r == NULL)
        return -1;
    t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* A blocked answer kept for this customer and this exact query: 1 answered, 0 not here, -1 error. */
static int blocked_hit(Listener *self, Dgram *g)
{
    PyObject *cache, *ent, *resp, *v, *hosts, *nv;
    long long b, n, rcode;
    int o;
    cache = PyDict_GetItemWithError(self->s_answers, g->cid);
    if (cache == NULL || !PyDict_Check(cache))
        return PyErr_Occurred() ? -1 : 0;
    ent = PyDict_GetItemWithError(cache, g->key);
    if (ent == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(ent);
    b = bump(PyTuple_GET_ITEM(self->hooks, H_RL_BLOCKED), g->k);
    if (b < 0)
        goto fail;
    if (b > self->s_blocked_qps) {
        o = over(self, g, b, self->s_blocked_qps, S_blocked);
        if (o != 0) {
            Py_DECREF(ent);
            return o < 0 ? -1 : 1;
        }
    }
    if (!(resp = PyObject_GetAttr(ent, S_resp)))
        goto fail;
    o = reply(self, g->buf, resp, g->name);
    Py_DECREF(resp);
    if (o < 0 || (!self->valid && load_state(self) < 0))
        goto fail;
    if (attr_ll(ent, S_n, &n) < 0)
        goto fail;
    if (n == 0 && PyList_Append(self->s_dirty, ent) < 0)
        goto fail;
    if (!(nv = PyLong_FromLongLong(n + 1)) || PyObject_SetAttr(ent, S_n, nv) < 0) {
        Py_XDECREF(nv);
        goto fail;
    }
    Py_DECREF(nv);
    if (!(hosts = PyObject_GetAttr(ent, S_hosts)))
        goto fail;
    if (!PyDict_Check(hosts) || bump(hosts, g->host) < 0) {
        Py_DECREF(hosts);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "_fastudp: LocalAnswer.hosts is not a dict");
        goto fail;
    }
    Py_DECREF(hosts);
    if (!(v = PyObject_GetAttr(ent, S_rcode)))
        goto fail;
    rcode = PyLong_AsLongLong(v);
    Py_DECREF(v);
    self->rcodes[rcode & 15]++;
    observe(self, &self->h_local, now() - g->t0);
    Py_DECREF(ent);
    return 1;
fail:
    Py_DECREF(ent);
    return -1;
}

static unsigned int be32(const unsigned char *p)
{
    return ((unsigned int)p[0] << 24) | ((unsigned int)p[1] << 16) | ((unsigned int)p[2] << 8) | p[3];
}

/* CachePath.warm_wire for the common case, a one-RR entry of an earlier second brought to this
 * second by one TTL patch (AnswerCache.rerender) and kept in ``hot``: its new wire (a new
 * reference), or NULL without an exception when Python must decide (no entry, another
 * generation, a CNAME, another question, several RRs, due for prefetch or expiring), or NULL
 * with an exception. The entry layout is cache.py's (_META; P, Q from the hooks). */
static PyObject *warm(Listener *self, Dgram *g)
{
    PyObject *ac = self->s_acache, *layout = PyTuple_GET_ITEM(self->hooks, H_CACHE_LAYOUT);
    PyObject *d = NULL, *gc = NULL, *s4 = NULL, *hk = NULL, *v, *nv = NULL, *w = NULL;
    Py_ssize_t P = PyLong_AsSsize_t(PyTuple_GET_ITEM(layout, 0)), Q = PyLong_AsSsize_t(PyTuple_GET_ITEM(layout, 1));
    Py_ssize_t hot_max = PyLong_AsSsize_t(PyTuple_GET_ITEM(layout, 2)), vlen, nl, pos;
    const unsigned char *e, *k = (const unsigned char *)PyBytes_AS_STRING(g->key);
    long long cur;
    Py_hash_t hv;
    long long left;
    if ((hv = PyObject_Hash(g->key)) == -1)
        return NULL;
    if (!(d = PyObject_GetAttr(ac, S_d)) || !(gc = PyObject_GetAttr(ac, S_gen_cname)) ||
        !(s4 = PyObject_GetAttr(ac, S_s4)) || attr_ll(ac, S_s, &cur) < 0 || !(hk = PyLong_FromSsize_t(hv >> 4)))
        goto out;
    if (!PyDict_Check(d) || !PyBytes_Check(gc) || PyBytes_GET_SIZE(gc) != 5 || !PyBytes_Check(s4) ||
        PyBytes_GET_SIZE(s4) != 4)
        goto out;
    v = PyDict_GetItemWithError(d, hk);
    if (v == NULL || !PyBytes_Check(v))
        goto out;
    e = (const unsigned char *)PyBytes_AS_STRING(v);
    vlen = PyBytes_GET_SIZE(v);
    if (vlen < Q + 10 || memcmp(e + 4, PyBytes_AS_STRING(gc), 5) != 0 || !(e[10] & 2))
        goto out;
    nl = e[9];
    pos = Q + 10 + nl;                               /* the answer RR's TTL */
    if (pos + 4 > vlen || PyBytes_GET_SIZE(g->key) < 14 + nl || memcmp(e + Q, k + 10, 4 + nl) != 0)
        goto out;
    left = (long long)be32(e + 23) - cur;           /* exp - s */
    if (left * 10 <= (long long)be32(e + 11) || (long long)be32(e) >= cur)   /* prefetch due, or not older */
        goto out;
    if (!(nv = PyBytes_FromStringAndSize(NULL, vlen)))
        goto out;
    {
        unsigned char *o = (unsigned char *)PyBytes_AS_STRING(nv);
        memcpy(o, PyBytes_AS_STRING(s4), 4);
        memcpy(o + 4, e + 4, pos - 4);
        o[pos] = (unsigned char)(left >> 24); o[pos + 1] = (unsigned char)(left >> 16);
        o[pos + 2] = (unsigned char)(left >> 8); o[pos + 3] = (unsigned char)left;
        memcpy(o + pos + 4, e + pos + 4, vlen - pos - 4);
    }
    if (PyDict_SetItem(d, hk, nv) < 0 || !(w = PyBytes_FromStringAndSize(PyBytes_AS_STRING(nv) + P, vlen - P)))
        goto out;
    if (PyDict_GET_SIZE(self->s_hot) < hot_max && PyDict_SetItem(self->s_hot, g->key, w) < 0)   /* keep_hot */
        Py_CLEAR(w);
out:
    Py_XDECREF(d); Py_XDECREF(gc); Py_XDECREF(s4); Py_XDECREF(hk); Py_XDECREF(nv);
    return w;
}

/* The answer cache's hot path (engine._cache_hitter): 1 answered, 0 not here, -1 error. */
static int cache_hit(Listener *self, Dgram *g)
{
    PyObject *h = self->hooks, *w, *r;
    int eq;
    if (g->cid == PyTuple_GET_ITEM(h, H_OUTSIDE))
        return 0;
    if (g->cid == Py_None) {
        PyObject *sub = PyDict_GetItemWithError(self->s_subs, Py_None), *rf;
        int t;
        if (sub == NULL)
            return PyErr_Occurred() ? -1 : 0;
        if (!(rf = PyObject_GetAttr(sub, S_refuse)))
            return -1;
        t = PyObject_IsTrue(rf);
        Py_DECREF(rf);
        if (t != 0)
            return t < 0 ? -1 : 0;
    }
    if (PySet_GET_SIZE(self->s_suspended) > 0) {
        int t = PySet_Contains(self->s_suspended, g->cid);
        if (t != 0)
            return t < 0 ? -1 : 0;
    }
    eq = PyObject_RichCompareBool(self->s_sgen, self->s_gen, Py_EQ);
    if (eq < 0)
        return -1;
    if (g->t0 >= self->s_until || !eq) {
        r = PyObject_CallMethodObjArgs(self->s_acache, S_restamp, g->t0obj, self->s_gen, NULL);
        self->valid = 0;
        self->called = 1;
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        if (load_state(self) < 0)
            return -1;
        if (self->s_acache == Py_None)
            return 0;
    }
    w = PyDict_GetItemWithError(self->s_hot, g->key);
    if (w != NULL) {
        Py_INCREF(w);
    } else {
        if (PyErr_Occurred())
            return -1;
        w = warm(self, g);
        if (w == NULL && PyErr_Occurred())
            return -1;
    }
    if (w == NULL) {                     /* the general case: Python decides */
        w = PyObject_CallMethodObjArgs(PyTuple_GET_ITEM(h, H_ENGINE), S_warm_wire, g->key, g->t0obj, NULL);
        self->valid = 0;
        self->called = 1;
        if (w == NULL)
            return -1;
        if (w == Py_None) {
            Py_DECREF(w);
            return load_state(self) < 0 ? -1 : 0;
        }
        if (load_state(self) < 0 || self->s_acache == Py_None) {
            Py_DECREF(w);
            return PyErr_Occurred() ? -1 : 0;
        }
    }
    if (!PyBytes_Check(w) || PyBytes_GET_SIZE(w) < 2) {
        Py_DECREF(w);
        PyErr_SetString(PyExc_TypeError, "_fastudp: a cached answer is not bytes");
        return -1;
    }
    self->rcodes[PyBytes_AS_STRING(w)[1] & 15]++;
    eq = reply(self, g->buf, w, g->name);
    Py_DECREF(w);
    if (eq < 0)
        return -1;
    if (!self->valid && load_state(self) < 0)
        return -1;
    if (self->hits_ac != self->s_acache) {
        if (flush_hits(self) < 0)
            return -1;
        Py_INCREF(self->s_acache);
        self->hits_ac = self->s_acache;
    }
    self->hits++;
    observe(self, &self->h_cache, now() - g->t0);
    return 1;
}

/* zones.named: does any list (entry or allow exception) name the child ``label`` +
 * ``z.dotparent`` itself? 1 yes, 0 no, -1 error. */
static int named(Listener *self, PyObject *z, const unsigned char *label, int ln)
{
    unsigned char low[64];
    PyObject *first, *dp, *name, *shards, *dicts, *shard;
    Py_hash_t hv;
    Py_ssize_t i, mask;
    int j, r = 0;
    for (j = 0; j < ln; j++)
        low[j] = (label[j] >= 'A' && label[j] <= 'Z') ? label[j] + 32 : label[j];     /* bytes.lower() */
    if (!(dp = PyObject_GetAttr(z, S_dotparent)))
        return -1;
    first = PyUnicode_DecodeLatin1((const char *)low, ln, NULL);
    name = first ? PyUnicode_Concat(first, dp) : NULL;
    Py_XDECREF(first);
    Py_DECREF(dp);
    if (name == NULL || (hv = PyObject_Hash(name)) == -1) {
        Py_XDECREF(name);
        return -1;
    }
    mask = PyLong_AsSsize_t(PyTuple_GET_ITEM(self->hooks, H_MASK));
    shards = PyTuple_GET_ITEM(self->s_probes, 0);
    dicts = PyTuple_GET_ITEM(self->s_probes, 1);
    for (i = 0; r == 0 && i < PyTuple_GET_SIZE(shards); i++) {
        if (!(shard = PySequence_GetItem(PyTuple_GET_ITEM(shards, i), (Py_ssize_t)((size_t)hv & (size_t)mask)))) {
            r = -1;
            break;
        }
        r = PySequence_Contains(shard, name);
        Py_DECREF(shard);
    }
    for (i = 0; r == 0 && i < PyTuple_GET_SIZE(dicts); i++)
        r = PySequence_Contains(PyTuple_GET_ITEM(dicts, i), name);
    Py_DECREF(name);
    return r;
}

/* A blocked answer for every child of a parent (engine._zone_answerer, zones.py). 1 answered,
 * 0 not here (the Python path decides), -1 error. */
static int zone_hit(Listener *self, Dgram *g)
{
    PyObject *zones, *zkey, *z, *v, *hdr = NULL, *rest = NULL, *lab = NULL, *zh = NULL, *nv;
    const unsigned char *parts[4];
    Py_ssize_t lens[4];
    long long room, n, rcode, b;
    int ln, t, r = -1;
    if (g->len <= 17)
        return 0;
    ln = g->buf[12];
    if (ln <= 0 || ln >= 64 || 13 + ln > g->len)
        return 0;
    zones = PyDict_GetItemWithError(self->s_zones, g->cid);
    if (zones == NULL || !PyDict_Check(zones))
        return PyErr_Occurred() ? -1 : 0;
    if (!(zkey = PyBytes_FromStringAndSize((const char *)g->buf + 13 + ln, g->len - 13 - ln)))
        return -1;
    z = PyDict_GetItemWithError(zones, zkey);
    Py_DECREF(zkey);
    if (z == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(z);
    if (attr_ll(z, S_room, &room) < 0 || !(v = PyObject_GetAttr(z, S_qhdr)))
        goto out;
    t = PyBytes_Check(v) && PyBytes_GET_SIZE(v) == 10 && memcmp(PyBytes_AS_STRING(v), g->buf + 2, 10) == 0;
    Py_DECREF(v);
    if (ln > room || !t || memchr(g->buf + 13, '.', ln) != NULL) {
        r = 0;
        goto out;
    }
    if (!(v = PyObject_GetAttr(z, S_clean)))
        goto out;
    t = PyObject_IsTrue(v);
    Py_DECREF(v);
    if (t == 0)                              /* a list may name the child itself: look */
        t = named(self, z, g->buf + 13, ln) == 0;
    if (t <= 0) {                            /* named (the full path judges it), or an error */
        r = PyErr_Occurred() ? -1 : 0;
        goto out;
    }
    if ((b = bump(PyTuple_GET_ITEM(self->hooks, H_RL_BLOCKED), g->k)) < 0)
        goto out;
    if (b > self->s_blocked_qps && (t = over(self, g, b, self->s_blocked_qps, S_blocked)) != 0) {
        r = t < 0 ? -1 : 1;
        goto out;
    }
    if (!(hdr = PyObject_GetAttr(z, S_hdr)) || !(rest = PyObject_GetAttr(z, S_rest)))
        goto out;
    if (!PyBytes_Check(hdr) || !PyBytes_Check(rest)) {
        PyErr_SetString(PyExc_TypeError, "_fastudp: ZoneAnswer.hdr/rest are not bytes");
        goto out;
    }
    parts[0] = g->buf; lens[0] = 2;
    parts[1] = (const unsigned char *)PyBytes_AS_STRING(hdr); lens[1] = PyBytes_GET_SIZE(hdr);
    parts[2] = g->buf + 12; lens[2] = 1 + ln;
    parts[3] = (const unsigned char *)PyBytes_AS_STRING(rest); lens[3] = PyBytes_GET_SIZE(rest);
    if (send_parts(self, parts, lens, 4, g->name) < 0)
        goto out;
    if (!self->valid && load_state(self) < 0)
        goto out;
    if (!(lab = PyBytes_FromStringAndSize((const char *)g->buf + 12, 1 + ln)) || !(zh = PyObject_GetAttr(z, S_host)))
        goto out;
    t = zh == Py_None ? 0 : PyObject_RichCompareBool(zh, g->host, Py_EQ);
    if (t < 0)
        goto out;
    if (zh != Py_None && !t) {               /* another client: ZoneAnswer.count keeps them */
        if (!(v = PyObject_CallMethodObjArgs(z, S_count, g->host, lab, NULL)))
            goto out;
        Py_DECREF(v);
        self->valid = 0;
        self->called = 1;
    } else {
        if (attr_ll(z, S_n, &n) < 0 || !(nv = PyLong_FromLongLong(n + 1)))
            goto out;
        t = PyObject_SetAttr(z, S_n, nv);
        Py_DECREF(nv);
        if (t < 0)
            goto out;
        if (zh == Py_None) {                 /* the first since the drain */
            PyObject *labels = PyList_New(1);
            if (labels == NULL)
                goto out;
            Py_INCREF(lab);
            PyList_SET_ITEM(labels, 0, lab);
            t = PyObject_SetAttr(z, S_labels, labels);
            Py_DECREF(labels);
            if (t < 0 || PyObject_SetAttr(z, S_host, g->host) < 0 || PyList_Append(self->s_dirty, z) < 0)
                goto out;
        } else {
            PyObject *labels = PyObject_GetAttr(z, S_labels);
            if (labels == NULL)
                goto out;
            t = PyList_Check(labels) ? 0 : -1;
            if (t == 0 && PyList_GET_SIZE(labels) < PyLong_AsLong(PyTuple_GET_ITEM(self->hooks, H_SAMPLES))
                && (t = PySequence_Contains(labels, lab)) == 0)
                t = PyList_Append(labels, lab);
            Py_DECREF(labels);
            if (t < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "_fastudp: ZoneAnswer.labels is not a list");
                goto out;
            }
        }
    }
    if (attr_ll(z, S_rcode, &rcode) < 0)
        goto out;
    self->rcodes[rcode & 15]++;
    observe(self, &self->h_local, now() - g->t0);
    r = 1;
out:
    Py_DECREF(z);
    Py_XDECREF(hdr);
    Py_XDECREF(rest);
    Py_XDECREF(lab);
    Py_XDECREF(zh);
    return r;
}

/* Everything after the rate limit for one datagram: 0, or -1 with an exception set. */
static int fast(Listener *self, Dgram *g)
{
    PyObject *h = self->hooks, *r, *cid;
    long long n;
    int o;
    self->n_udp++;
    r = PyDict_GetItemWithError(PyTuple_GET_ITEM(h, H_RL_KEYS), g->host);     /* borrowed */
    if (r != NULL && PyObject_IsTrue(r) == 1) {
        Py_INCREF(r);
        g->k = r;
    } else {
        if (PyErr_Occurred())
            return -1;
        g->k = PyObject_CallOneArg(PyTuple_GET_ITEM(h, H_RL_KEY), g->host);
        self->valid = 0;
        self->called = 1;
        if (g->k == NULL)
            return -1;
    }
    if (!self->valid && load_state(self) < 0)
        return -1;
    if ((n = bump(PyTuple_GET_ITEM(h, H_RL_COUNTS), g->k)) < 0)
        return -1;
    if (n > self->s_qps) {
        o = over(self, g, n, self->s_qps, S_queries);
        if (o != 0)
            return o < 0 ? -1 : 0;
        if (load_state(self) < 0)
            return -1;
    }
    cid = PyDict_GetItemWithError(self->s_hostcache, g->host);
    if (cid != NULL && g->len >= 12) {
        Py_INCREF(cid);
        g->cid = cid;
        if (!(g->key = PyBytes_FromStringAndSize((const char *)g->buf + 2, g->len - 2)))
            return -1;
        if ((o = blocked_hit(self, g)) != 0)
            return o < 0 ? -1 : 0;
        if (!self->valid && load_state(self) < 0)
            return -1;
        /* Children of a blocked parent before the cache: a name allowed for everyone (all the
         * hot path serves) is never a child of a parent blocked in the same generation, so the
         * order changes no answer, and a DGA flood does not pay a cache miss per query. Without
         * the cache, a name seen allowed before is forwarded by the Python path first. */
        o = self->s_acache == Py_None ? PyDict_Contains(self->s_allowed, g->key) : 0;
        if (o < 0 || (o == 0 && (o = zone_hit(self, g)) != 0))
            return o < 0 ? -1 : 0;
        if (!self->valid && load_state(self) < 0)
            return -1;
        if (self->s_acache != Py_None && (o = cache_hit(self, g)) != 0)
            return o < 0 ? -1 : 0;
    } else if (PyErr_Occurred()) {
        return -1;
    } else if (cid != NULL) {          /* shorter than a header: the engine refuses it */
        Py_INCREF(cid);
        g->cid = cid;
    }
    if (!dg_data(g) || !dg_addr(self, g) || enter_python(self) < 0)
        return -1;
    r = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(h, H_REST), g->data, g->host, g->addr, g->t0obj, g->k,
                                     g->cid ? g->cid : PyTuple_GET_ITEM(h, H_MISS),
                                     g->key ? g->key : Py_None, NULL);
    self->valid = 0;
    self->called = 1;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The Python transport's on_datagram(data, host, addr, t0) (no engine hooks). */
static int plain(Listener *self, Dgram *g)
{
    PyObject *r;
    if (!dg_data(g) || !dg_addr(self, g) || enter_python(self) < 0)
        return -1;
    r = PyObject_CallFunctionObjArgs(self->on_datagram, g->data, g->host, g->addr, g->t0obj, NULL);
    self->called = 1;
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static void report(Listener *self)
{
    /* like the Python loop's ``except Exception: engine.failed(exc)``: never stop the listener */
    PyObject *type, *value, *tb, *r;
    PyObject *failed = self->hooks != Py_None ? PyTuple_GET_ITEM(self->hooks, H_FAILED) : NULL;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (failed != NULL && value != NULL && PyErr_GivenExceptionMatches(type, PyExc_Exception)) {
        if (tb != NULL)
            PyException_SetTraceback(value, tb);
        r = PyObject_CallOneArg(failed, value);
        if (r == NULL)
            PyErr_WriteUnraisable(failed);
        Py_XDECREF(r);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        self->valid = 0;
        self->called = 1;
        return;
    }
    PyErr_Restore(type, value, tb);
    PyErr_WriteUnraisable((PyObject *)self);
    self->valid = 0;
    self->called = 1;
}

/* One datagram: its source as text, the mute check, then the fast paths or on_datagram. */
static void one(Listener *self, int i, double t0, PyObject *t0obj)
{
    Dgram g = {0};
    PyObject *ip, *m;
    g.buf = self->rxbuf + (size_t)i * RX_SLOT;
    g.name = self->rxname[i];
    g.len = self->rx[i].msg_len;
    g.t0 = t0;
    g.t0obj = t0obj;
    if (!(ip = PyBytes_FromStringAndSize((const char *)g.name + self->ip_off, self->ip_len)))
        goto error;
    g.host = PyDict_GetItemWithError(self->hosts, ip);
    if (g.host != NULL) {
        Py_INCREF(g.host);
    } else if (!PyErr_Occurred()) {
        g.host = PyObject_CallOneArg(self->host_of, ip);
        self->valid = 0;
        self->called = 1;
    }
    Py_DECREF(ip);
    if (g.host == NULL)
        goto error;
    m = PyDict_GET_SIZE(self->muted) ? PyDict_GetItemWithError(self->muted, g.host) : NULL;
    if (m != NULL) {                          /* over its limit this second: dropped unread */
        PyObject *one_ = PyLong_FromLong(1), *nv = one_ ? PyNumber_Add(m, one_) : NULL;
        Py_XDECREF(one_);
        if (nv == NULL || PyDict_SetItem(self->muted, g.host, nv) < 0) {
            Py_XDECREF(nv);
            goto error;
        }
        Py_DECREF(nv);
        goto done;
    }
    if (PyErr_Occurred())
        goto error;
    if ((self->hooks == Py_None ? plain(self, &g) : fast(self, &g)) < 0)
        goto error;
    goto done;
error:
    report(self);
done:
    Py_XDECREF(g.host);
    Py_XDECREF(g.k);
    Py_XDECREF(g.cid);
    Py_XDECREF(g.key);
    Py_XDECREF(g.data);
    Py_XDECREF(g.addr);
}

static void on_error(Listener *self, int err)
{
    PyObject *r = PyObject_CallFunction(self->on_error, "i", err);
    if (r == NULL)
        PyErr_WriteUnraisable(self->on_error);
    Py_XDECREF(r);
}

/* The loop's readable callback: up to MAX_ROUNDS batches of up to BATCH datagrams. */
static PyObject *Listener_readable(Listener *self, PyObject *Py_UNUSED(ignored))
{
    int round, i, n;
    for (round = 0; round < MAX_ROUNDS && !self->closed; round++) {
        double t0;
        PyObject *t0obj, *r;
        for (i = 0; i < self->batch; i++) {
            self->rx[i].msg_hdr.msg_namelen = self->namelen;
            self->rx[i].msg_hdr.msg_flags = 0;
        }
        n = recvmmsg(self->fd, self->rx, self->batch, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                on_error(self, errno);
            break;
        }
        t0 = now();
        if (!(t0obj = PyFloat_FromDouble(t0)))
            return NULL;
        self->valid = 0;
        self->called = self->marked = 0;
        for (i = 0; i < n; i++)
            one(self, i, t0, t0obj);
        Py_DECREF(t0obj);
        if (self->ntx)
            flush_tx(self);
        if (t0 - self->flushed_at >= FLUSH_EVERY) {
            self->flushed_at = t0;
            if (flush_counters(self) < 0)
                PyErr_WriteUnraisable((PyObject *)self);
        }
        self->valid = 0;                  /* kept, and checked by the next load_state */
        if (self->called) {               /* Python may have queued datagrams: flush every socket */
            self->marked = 0;
            if (!(r = PyObject_CallNoArgs(self->group_flush)))
                return NULL;
            Py_DECREF(r);
        }
        if (n < self->batch)
            break;
    }
    Py_RETURN_NONE;
}

/* The counts kept since the last add, added now: the engine's drain() calls this before
 * anything reads the counters (metrics, status, a worker's report). */
static PyObject *Listener_flush(Listener *self, PyObject *Py_UNUSED(ignored))
{
    self->flushed_at = now();
    if (flush_counters(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Listener_close(Listener *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    self->ntx = 0;
    drop_state(self);
    if (flush_counters(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* -- the type ------------------------------------------------------------------------------ */

static int Listener_init(Listener *self, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"fd", "family", "on_datagram", "hosts", "muted", "host_of", "on_error", "group",
                         "hooks", "batch", NULL};
    PyObject *on_datagram, *hosts, *muted, *host_of, *on_err, *group, *hooks = Py_None, *b;
    int fd, family, batch = BATCH, i;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiOO!O!OOO|Oi", kw, &fd, &family, &on_datagram, &PyDict_Type,
                                     &hosts, &PyDict_Type, &muted, &host_of, &on_err, &group, &hooks, &batch))
        return -1;
    if (self->rxbuf != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Listener is initialised once");
        return -1;
    }
    if (batch < 1 || batch > BATCH) {
        PyErr_Format(PyExc_ValueError, "batch must be 1..%d", BATCH);
        return -1;
    }
    if (family == AF_INET6) {
        self->ip_off = 8; self->ip_len = 16; self->namelen = 28;
    } else if (family == AF_INET) {
        self->ip_off = 4; self->ip_len = 4; self->namelen = 16;
    } else {
        PyErr_SetString(PyExc_ValueError, "family must be AF_INET or AF_INET6");
        return -1;
    }
    if (hooks != Py_None) {
        if (!PyTuple_Check(hooks) || PyTuple_GET_SIZE(hooks) != NHOOKS) {
            PyErr_Format(PyExc_TypeError, "hooks must be a tuple of %d", NHOOKS);
            return -1;
        }
        if (!PyDict_Check(PyTuple_GET_ITEM(hooks, H_RL_KEYS)) || !PyDict_Check(PyTuple_GET_ITEM(hooks, H_RL_COUNTS))
            || !PyDict_Check(PyTuple_GET_ITEM(hooks, H_RL_BLOCKED)) || !PyList_Check(PyTuple_GET_ITEM(hooks, H_RCODES))
            || !PyTuple_Check(b = PyTuple_GET_ITEM(hooks, H_BUCKETS)) || PyTuple_GET_SIZE(b) >= NBUCKETS) {
            PyErr_SetString(PyExc_TypeError, "hooks: rl counts dict, rcodes list, buckets tuple expected");
            return -1;
        }
        self->nbuckets = (int)PyTuple_GET_SIZE(b);
        for (i = 0; i < self->nbuckets; i++)
            if ((self->buckets[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(b, i))) == -1.0 && PyErr_Occurred())
                return -1;
    }
    if (!(self->rxbuf = PyMem_Calloc(BATCH, RX_SLOT)) || !(self->txbuf = PyMem_Calloc(BATCH, TX_SLOT))) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < BATCH; i++) {
        self->rxiov[i].iov_base = self->rxbuf + (size_t)i * RX_SLOT;
        self->rxiov[i].iov_len = RX_SLOT;
        self->rx[i].msg_hdr.msg_name = self->rxname[i];
        self->rx[i].msg_hdr.msg_iov = &self->rxiov[i];
        self->rx[i].msg_hdr.msg_iovlen = 1;
        self->txiov[i].iov_base = self->txbuf + (size_t)i * TX_SLOT;
        self->tx[i].msg_hdr.msg_name = self->txname[i];
        self->tx[i].msg_hdr.msg_namelen = self->namelen;
        self->tx[i].msg_hdr.msg_iov = &self->txiov[i];
        self->tx[i].msg_hdr.msg_iovlen = 1;
    }
    self->fd = fd;
    self->family = family;
    self->batch = batch;
    if (!(self->group_flush = PyObject_GetAttr(group, S_flush)))
        return -1;
#define KEEP(f, v) do { Py_INCREF(v); Py_XSETREF(self->f, v); } while (0)
    KEEP(on_datagram, on_datagram); KEEP(hosts, hosts); KEEP(muted, muted); KEEP(host_of, host_of);
    KEEP(on_error, on_err); KEEP(group, group); KEEP(hooks, hooks);
#undef KEEP
    return 0;
}

static int Listener_traverse(Listener *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_datagram); Py_VISIT(self->hosts); Py_VISIT(self->muted); Py_VISIT(self->host_of);
    Py_VISIT(self->on_error); Py_VISIT(self->group); Py_VISIT(self->group_flush); Py_VISIT(self->hooks);
    Py_VISIT(self->hits_ac);
    Py_VISIT(self->e_dict); Py_VISIT(self->l_dict); Py_VISIT(self->a_dict);
    Py_VISIT(self->s_hostcache); Py_VISIT(self->s_answers); Py_VISIT(self->s_acache); Py_VISIT(self->s_subs);
    Py_VISIT(self->s_suspended); Py_VISIT(self->s_gen); Py_VISIT(self->s_dirty); Py_VISIT(self->s_hot);
    Py_VISIT(self->s_sgen); Py_VISIT(self->s_zones); Py_VISIT(self->s_allowed); Py_VISIT(self->s_probes);
    return 0;
}

static int Listener_clear(Listener *self)
{
    drop_state(self);
    Py_CLEAR(self->e_dict); Py_CLEAR(self->l_dict);
    Py_CLEAR(self->on_datagram); Py_CLEAR(self->hosts); Py_CLEAR(self->muted); Py_CLEAR(self->host_of);
    Py_CLEAR(self->on_error); Py_CLEAR(self->group); Py_CLEAR(self->group_flush); Py_CLEAR(self->hooks);
    Py_CLEAR(self->hits_ac);
    return 0;
}

static void Listener_dealloc(Listener *self)
{
    PyObject_GC_UnTrack(self);
    Listener_clear(self);
    PyMem_Free(self->rxbuf);
    PyMem_Free(self->txbuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Listener_methods[] = {
    {"readable", (PyCFunction)Listener_readable, METH_NOARGS, "Read and answer what the socket holds."},
    {"flush", (PyCFunction)Listener_flush, METH_NOARGS, "Add the counts kept in C to the engine's counters."},
    {"close", (PyCFunction)Listener_close, METH_NOARGS, "Stop: nothing more is read or sent (the counts are added)."},
    {NULL}
};

static PyTypeObject ListenerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "nocpolicy.dns._fastudp.Listener",
    .tp_basicsize = sizeof(Listener),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A DNS listener socket's read loop and fast paths (see mmsg.BatchedUdp.accelerate).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Listener_init,
    .tp_dealloc = (destructor)Listener_dealloc,
    .tp_traverse = (traverseproc)Listener_traverse,
    .tp_clear = (inquiry)Listener_clear,
    .tp_methods = Listener_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastudp",
    "The DNS guard's UDP listener loop and fast paths in C (optional; mmsg.py falls back to Python).",
    -1, NULL
};

PyMODINIT_FUNC PyInit__fastudp(void)
{
    PyObject *m;
#define INTERN(v, s) if (!(v = PyUnicode_InternFromString(s))) return NULL
    INTERN(S_hostcache, "hostcache"); INTERN(S_answers, "answers"); INTERN(S_acache, "acache");
    INTERN(S_subs, "subs"); INTERN(S_suspended, "suspended"); INTERN(S_gen, "gen"); INTERN(S_dirty, "dirty");
    INTERN(S_hot, "hot"); INTERN(S_until, "until"); INTERN(S_sgen, "sgen"); INTERN(S_qps, "qps");
    INTERN(S_blocked_qps, "blocked_qps"); INTERN(S_resp, "resp"); INTERN(S_n, "n"); INTERN(S_hosts, "hosts");
    INTERN(S_rcode, "rcode"); INTERN(S_refuse, "refuse"); INTERN(S_restamp, "restamp");
    INTERN(S_warm_wire, "warm_wire"); INTERN(S_udp, "udp"); INTERN(S_counts, "counts"); INTERN(S_total, "total");
    INTERN(S_hits, "hits"); INTERN(S_scheduled, "scheduled"); INTERN(S_counters, "counters");
    INTERN(S_send_drops, "send_drops"); INTERN(S_queries, "queries"); INTERN(S_blocked, "blocked");
    INTERN(S_flush, "flush"); INTERN(S_zones, "zones"); INTERN(S_allowed, "allowed"); INTERN(S_clean, "clean");
    INTERN(S_room, "room"); INTERN(S_qhdr, "qhdr"); INTERN(S_hdr, "hdr"); INTERN(S_rest, "rest");
    INTERN(S_host, "host"); INTERN(S_labels, "labels"); INTERN(S_count, "count");
    INTERN(S_dotparent, "dotparent"); INTERN(S_probes, "_probes"); INTERN(S_d, "d");
    INTERN(S_gen_cname, "gen_cname"); INTERN(S_s, "s"); INTERN(S_s4, "s4");
#undef INTERN
    if (PyType_Ready(&ListenerType) < 0)
        return NULL;
    if (!(m = PyModule_Create(&module)))
        return NULL;
    Py_INCREF(&ListenerType);
    if (PyModule_AddObject(m, "Listener", (PyObject *)&ListenerType) < 0) {
        Py_DECREF(&ListenerType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "NHOOKS", NHOOKS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
