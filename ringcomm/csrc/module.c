/* The module ringcomm._native: the compiled core of ringcomm's small calls and messages
 * (optional: ringcomm/native.py). Its types and functions are in the other files (core.h
 * says which is where); here they are registered, with the constants native.py checks. */
#include "core.h"

static PyMethodDef module_methods[] = {
    {"pair_allreduce", (PyCFunction)(void (*)(void))rc_pair_allreduce, METH_FASTCALL,
     "pair_allreduce(out_fd, in_fd, rows, rank, template, seq, src, out, kind, op, spin) -> "
     "(code, sent, got, send_errno, recv_errno)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ringcomm._native",
    "The compiled core of ringcomm's small calls and messages (optional).", -1, module_methods,
};

static int add_type(PyObject *m, const char *name, PyTypeObject *type)
{
    if (PyType_Ready(type) < 0)
        return -1;
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (add_type(m, "Segment", &rc_SegmentType) < 0 ||
        add_type(m, "Channel", &rc_ChannelType) < 0 ||
        PyModule_AddIntConstant(m, "HEADER", HEADER_BYTES) < 0 || /* the name callers know */
        PyModule_AddIntConstant(m, "HEADER_BYTES", HEADER_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "SEQ_AT", SEQ_AT) < 0 ||
        PyModule_AddIntConstant(m, "SEQ_BYTES", SEQ_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "RANK_AT", RANK_AT) < 0 ||
        PyModule_AddIntConstant(m, "RANK_BYTES", RANK_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MAX_RANKS", MAX_RANKS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
