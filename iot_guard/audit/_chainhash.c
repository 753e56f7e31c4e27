/* The audit chain's SHA-256 calls, without a hash object per call.
 *
 * iot_guard/audit/hashes.py holds the definitions (and runs them with hashlib when this
 * module is not built); this is the same arithmetic, done in one call each:
 *   leaf_hash(line)        = SHA-256(0x00 || line)          [RFC 6962 §2.1]
 *   node_hash(left, right) = SHA-256(0x01 || left || right)  [RFC 6962 §2.1]
 *   hex_sha256(data)       = the lowercase hex digest, as bytes (a record's payload_sha256)
 *
 * Why: each audited publish hashes its payload, its line (the Merkle leaf, which is also
 * the next line's link) and about one tree node. Through hashlib each of those builds a
 * hash object, looks the digest up by name in OpenSSL and frees it again, which costs
 * more than hashing a 775-byte line with the CPU's SHA instructions. Here the digest is
 * fetched once and one context is reused.
 *
 * The one context is used only while the GIL is held (every call below holds it), so two
 * threads never share it. That holds because this is a single-phase module: it cannot be
 * loaded into a subinterpreter with a GIL of its own, and a free-threaded build turns the
 * GIL back on for it. Do not declare Py_mod_gil or per-interpreter support without giving
 * each caller its own context. Inputs of LARGE bytes or more are hashed with a context of
 * their own and the GIL released (hashlib's threshold), so a big payload does not stall
 * the other threads (the state store's). Any C-contiguous object with the buffer protocol
 * is accepted, like hashlib (another raises BufferError); str is refused with TypeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#define LARGE 2048  /* hashlib releases the GIL from here on (HASHLIB_GIL_MINSIZE) */

static EVP_MD *sha256;  /* fetched once: a fetch by name costs a lookup under a lock */
static EVP_MD_CTX *shared;  /* reused while the GIL is held */

typedef struct {
    const unsigned char *data;
    size_t size;
} part;

/* SHA-256 over the parts, in order, into out. 0 and a Python error on failure. */
static int digest(const part *parts, int count, size_t total, unsigned char out[32]) {
    EVP_MD_CTX *ctx = shared;
    int ok = 1;
    unsigned int n = 0;
    if (total >= LARGE) {
        ctx = EVP_MD_CTX_new();
        if (ctx == NULL) {
            PyErr_NoMemory();
            return 0;
        }
        Py_BEGIN_ALLOW_THREADS
        ok = EVP_DigestInit_ex2(ctx, sha256, NULL);
        for (int i = 0; ok && i < count; i++)
            ok = EVP_DigestUpdate(ctx, parts[i].data, parts[i].size);
        ok = ok && EVP_DigestFinal_ex(ctx, out, &n);
        Py_END_ALLOW_THREADS
        EVP_MD_CTX_free(ctx);
    } else {
        ok = EVP_DigestInit_ex2(ctx, sha256, NULL);
        for (int i = 0; ok && i < count; i++)
            ok = EVP_DigestUpdate(ctx, parts[i].data, parts[i].size);
        ok = ok && EVP_DigestFinal_ex(ctx, out, &n);
    }
    if (!ok || n != 32) {
        ERR_clear_error();  /* ours to report, not left for the next OpenSSL caller */
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not compute SHA-256");
        return 0;
    }
    return 1;
}

/* A read-only view of a bytes-like object; str is refused, as hashlib refuses it. */
static int view(PyObject *obj, Py_buffer *buf) {
    if (PyUnicode_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "Strings must be encoded before hashing");
        return 0;
    }
    return PyObject_GetBuffer(obj, buf, PyBUF_SIMPLE) == 0;
}

static PyObject *prefixed(unsigned char prefix, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer bufs[2];
    part parts[3] = {{&prefix, 1}};
    size_t total = 1;
    unsigned char out[32];
    Py_ssize_t got = 0;
    PyObject *result = NULL;
    for (; got < nargs; got++) {
        if (!view(args[got], &bufs[got]))
            goto done;
        parts[got + 1].data = bufs[got].buf;
        parts[got + 1].size = (size_t)bufs[got].len;
        total += (size_t)bufs[got].len;
    }
    if (digest(parts, (int)nargs + 1, total, out))
        result = PyBytes_FromStringAndSize((const char *)out, 32);
done:
    while (got > 0)
        PyBuffer_Release(&bufs[--got]);
    return result;
}

static PyObject *leaf_hash(PyObject *module, PyObject *line) {
    return prefixed(0x00, &line, 1);
}

static PyObject *node_hash(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "node_hash() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    return prefixed(0x01, args, 2);
}

static PyObject *hex_sha256(PyObject *module, PyObject *data) {
    static const char digits[] = "0123456789abcdef";
    Py_buffer buf;
    unsigned char out[32];
    char hex[64];
    if (!view(data, &buf))
        return NULL;
    part whole = {buf.buf, (size_t)buf.len};
    int ok = digest(&whole, 1, whole.size, out);
    PyBuffer_Release(&buf);
    if (!ok)
        return NULL;
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[out[i] >> 4];
        hex[2 * i + 1] = digits[out[i] & 15];
    }
    return PyBytes_FromStringAndSize(hex, 64);
}

static PyMethodDef methods[] = {
    {"leaf_hash", (PyCFunction)leaf_hash, METH_O, "SHA-256(0x00 || line) [RFC 6962 §2.1]"},
    {"node_hash", (PyCFunction)(void (*)(void))node_hash, METH_FASTCALL,
     "SHA-256(0x01 || left || right) [RFC 6962 §2.1]"},
    {"hex_sha256", (PyCFunction)hex_sha256, METH_O, "SHA-256 of data, in lowercase hex bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef chainhash = {
    PyModuleDef_HEAD_INIT, "_chainhash", "The audit chain's SHA-256 calls (see hashes.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__chainhash(void) {
    if (sha256 == NULL)
        sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (shared == NULL)
        shared = EVP_MD_CTX_new();
    if (sha256 == NULL || shared == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256 here");
        return NULL;
    }
    return PyModule_Create(&chainhash);
}
