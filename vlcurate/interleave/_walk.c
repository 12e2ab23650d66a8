/* The reading-order walk of vlcurate/interleave/extract.py, compiled, over the tree
 * selectolax's Lexbor parser built (read only; nothing here allocates or frees a node).
 *
 * It is the Python walk (`_walk` in extract.py) step for step: the same kinds per tag
 * id, the same stack of where to go on after a subtree, the same flush of a block's
 * text. What is a page's rule rather than the walk's stays in Python and is passed in:
 * whether an element is boilerplate (`is_boilerplate(attrs)`, called only for elements
 * with one of its attributes) and what an <img> names (`image_ref(attrs, base)`). The
 * text of a block is collapsed as `" ".join(text.split())` collapses it: in C for ASCII
 * text, by those very str methods otherwise.
 *
 * The structs are read through Lexbor's own headers, taken at build time from the
 * selectolax release this module is built for (setup.py); extract.py uses the module
 * only when the installed selectolax is that release.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <lexbor/dom/interfaces/attr.h>
#include <lexbor/dom/interfaces/attr_res.h>
#include <lexbor/dom/interfaces/character_data.h>
#include <lexbor/dom/interfaces/element.h>
#include <lexbor/dom/interfaces/node.h>

#ifndef VLC_SELECTOLAX_VERSION
#error "VLC_SELECTOLAX_VERSION: the selectolax release whose Lexbor headers this is built with"
#endif

enum { K_OTHER, K_TEXT, K_SKIP, K_IMAGE, K_BLOCK };  /* the order of extract.py's kinds */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_add(Buf *b, const void *src, Py_ssize_t n) {
    if (b->len + n > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n) cap *= 2;
        char *grown = PyMem_Realloc(b->data, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

/* What str.split() takes for whitespace among ASCII characters (0x1c-0x1f included). */
static inline int ascii_space(unsigned char c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
}

/* " ".join(text.split()) of the UTF-8 in `text`, or NULL with an exception set.
 * `ends`: where each text node's bytes end, to decode node by node (as selectolax
 * does, with U+FFFD for bytes that are not UTF-8) should the whole not be UTF-8. */
static PyObject *collapse(Buf *text, Buf *ends, Buf *scratch) {
    const unsigned char *s = (const unsigned char *)text->data;
    Py_ssize_t n = text->len, i, out = 0;
    int ascii = 1;
    for (i = 0; i < n; i++) {
        if (s[i] >= 0x80) {
            ascii = 0;
            break;
        }
    }
    if (ascii) {
        scratch->len = 0;
        if (n > scratch->cap && buf_add(scratch, s, n) < 0) return NULL;
        char *d = scratch->data;
        int gap = 0;
        for (i = 0; i < n; i++) {
            if (ascii_space(s[i])) {
                gap = out > 0;
            } else {
                if (gap) d[out++] = ' ';
                gap = 0;
                d[out++] = (char)s[i];
            }
        }
        return PyUnicode_DecodeASCII(d, out, NULL);
    }
    PyObject *whole = PyUnicode_DecodeUTF8(text->data, n, NULL);
    if (whole == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return NULL;
        PyErr_Clear();
        PyObject *parts = PyList_New(0);
        if (parts == NULL) return NULL;
        const Py_ssize_t *end = (const Py_ssize_t *)ends->data;
        Py_ssize_t start = 0, count = ends->len / (Py_ssize_t)sizeof(Py_ssize_t);
        for (i = 0; i < count; i++) {
            PyObject *part = PyUnicode_DecodeUTF8(text->data + start, end[i] - start, "replace");
            if (part == NULL || PyList_Append(parts, part) < 0) {
                Py_XDECREF(part);
                Py_DECREF(parts);
                return NULL;
            }
            Py_DECREF(part);
            start = end[i];
        }
        PyObject *empty = PyUnicode_FromStringAndSize("", 0);
        whole = empty ? PyUnicode_Join(empty, parts) : NULL;
        Py_XDECREF(empty);
        Py_DECREF(parts);
        if (whole == NULL) return NULL;
    }
    PyObject *words = PyUnicode_Split(whole, NULL, -1);
    Py_DECREF(whole);
    if (words == NULL) return NULL;
    PyObject *space = PyUnicode_FromStringAndSize(" ", 1);
    PyObject *joined = space ? PyUnicode_Join(space, words) : NULL;
    Py_XDECREF(space);
    Py_DECREF(words);
    return joined;
}

typedef struct {
    Buf text, ends, scratch;
    PyObject *text_block, *out;
} Blocks;

/* The text gathered since the last flush, as a text block when it is not empty. */
static int flush(Blocks *b) {
    PyObject *text = collapse(&b->text, &b->ends, &b->scratch);
    b->text.len = b->ends.len = 0;
    if (text == NULL) return -1;
    int rc = 0;
    if (PyUnicode_GET_LENGTH(text) > 0) {
        PyObject *block = PyObject_CallOneArg(b->text_block, text);
        rc = block == NULL ? -1 : PyList_Append(b->out, block);
        Py_XDECREF(block);
    }
    Py_DECREF(text);
    return rc;
}

static const lxb_dom_attr_data_t *attr_data(const lxb_dom_attr_t *attr) {
    lxb_dom_attr_id_t id = attr->qualified_name != 0 ? attr->qualified_name : attr->node.local_name;
    if (id >= LXB_DOM_ATTR__LAST_ENTRY) {
        return id == LXB_DOM_ATTR__LAST_ENTRY ? NULL : (const lxb_dom_attr_data_t *)id;
    }
    return &lxb_dom_attr_res_data_default[id];
}

/* The attribute names extract.py's _is_boilerplate reads: only an element with one of
 * them can be boilerplate. */
static int boilerplate_key(const lxb_char_t *name, size_t len) {
    switch (len) {
        case 2: return memcmp(name, "id", 2) == 0;
        case 4: return memcmp(name, "role", 4) == 0;
        case 5: return memcmp(name, "style", 5) == 0 || memcmp(name, "class", 5) == 0;
        case 6: return memcmp(name, "hidden", 6) == 0;
        case 11: return memcmp(name, "aria-hidden", 11) == 0;
        default: return 0;
    }
}

static const lxb_char_t *attr_name(const lxb_dom_attr_t *attr, size_t *len) {
    const lxb_dom_attr_data_t *data = attr_data(attr);
    *len = data ? data->entry.length : 0;
    return data ? lexbor_hash_entry_str(&data->entry) : (const lxb_char_t *)"";
}

static int has_boilerplate_key(const lxb_dom_element_t *element) {
    for (const lxb_dom_attr_t *attr = element->first_attr; attr != NULL; attr = attr->next) {
        size_t len;
        const lxb_char_t *name = attr_name(attr, &len);
        if (boilerplate_key(name, len)) return 1;
    }
    return 0;
}

/* The value of the attribute `name` (the first of that name), NULL when the element
 * has none or it has no value; *found: whether the element has it. */
static const lexbor_str_t *attr_value(const lxb_dom_element_t *element, const char *name, int *found) {
    size_t want = strlen(name);
    *found = 0;
    for (const lxb_dom_attr_t *attr = element->first_attr; attr != NULL; attr = attr->next) {
        size_t len;
        const lxb_char_t *have = attr_name(attr, &len);
        if (len == want && memcmp(have, name, len) == 0) {
            *found = 1;
            return attr->value != NULL && attr->value->data != NULL ? attr->value : NULL;
        }
    }
    return NULL;
}

/* The element's attributes as selectolax's `attributes` gives them: name as written,
 * value, None for an attribute without one. */
static PyObject *attrs_dict(const lxb_dom_element_t *element) {
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    for (const lxb_dom_attr_t *attr = element->first_attr; attr != NULL; attr = attr->next) {
        size_t name_len;
        const lxb_char_t *name = attr_name(attr, &name_len);
        PyObject *k = PyUnicode_DecodeUTF8((const char *)name, (Py_ssize_t)name_len, "replace");
        PyObject *v;
        if (attr->value != NULL && attr->value->data != NULL) {
            v = PyUnicode_DecodeUTF8((const char *)attr->value->data, (Py_ssize_t)attr->value->length, "replace");
        } else {
            v = Py_NewRef(Py_None);
        }
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    return d;
}

/* --- the common <img>, as extract.py's _image_ref reads it --------------------------
 * An image whose source is plain ASCII and named without srcset, resolved by
 * resolve_url's own shortcut (an absolute http(s) URL, or a root-relative one on an
 * ASCII http(s) base), is made here; any other goes to _image_ref. */

static const char *const SOURCE_ATTRS[] = {"data-src", "data-lazy-src", "data-original", "data-lazy", "src"};

/* declared_size: the ASCII digits after leading [\t\n\f\r ], None when there are
 * none or more than 18. */
static PyObject *declared_size(const lexbor_str_t *value) {
    if (value == NULL) Py_RETURN_NONE;
    const lxb_char_t *s = value->data, *end = value->data + value->length;
    while (s < end && (*s == '\t' || *s == '\n' || *s == '\f' || *s == '\r' || *s == ' ')) s++;
    long long n = 0;
    int digits = 0;
    for (; s < end && *s >= '0' && *s <= '9'; s++, digits++) {
        if (digits < 18) n = n * 10 + (*s - '0');
    }
    if (digits == 0 || digits > 18) Py_RETURN_NONE;
    return PyLong_FromLongLong(n);
}

typedef struct {
    PyObject *image_type, *image_ref, *base;
    const char *origin;  /* "/".join(base.split("/", 3)[:3]) of an ASCII http(s) base, else NULL */
    Py_ssize_t origin_len;
    Buf scratch, url, text, ends;
} Images;

static int starts(const lxb_char_t *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

static int contains(const lxb_char_t *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++) {
        if (memcmp(s + i, needle, k) == 0) return 1;
    }
    return 0;
}

/* The image of `element` made here, Py_None when it names none, or NULL with no
 * exception set when it is not the common case. */
static PyObject *common_image(Images *im, const lxb_dom_element_t *element) {
    int found;
    const lexbor_str_t *v;
    if ((v = attr_value(element, "srcset", &found)) != NULL && v->length > 0) return NULL;
    if ((v = attr_value(element, "data-srcset", &found)) != NULL && v->length > 0) return NULL;
    const lxb_char_t *src = NULL;
    size_t n = 0;
    for (size_t i = 0; i < sizeof SOURCE_ATTRS / sizeof *SOURCE_ATTRS && src == NULL; i++) {
        if ((v = attr_value(element, SOURCE_ATTRS[i], &found)) == NULL) continue;
        const lxb_char_t *s = v->data, *e = v->data + v->length;
        for (const lxb_char_t *c = s; c < e; c++) {
            if (*c >= 0x80) return NULL;  /* str.strip's whitespace beyond ASCII: _image_ref's */
        }
        while (s < e && ascii_space(*s)) s++;
        while (e > s && ascii_space(e[-1])) e--;
        if (e > s && !starts(s, (size_t)(e - s), "data:")) {
            src = s;
            n = (size_t)(e - s);
        }
    }
    if (src == NULL) Py_RETURN_NONE;
    if (contains(src, n, "/.") || contains(src, n, "\\")) return NULL;
    Buf *url = &im->url;
    url->len = 0;
    if (starts(src, n, "https://") || starts(src, n, "http://")) {
        const lxb_char_t *host = memchr(src, '/', n) + 2;  /* after "//" */
        if (host >= src + n || *host == '/') return NULL;  /* no host: urljoin's case */
        if (buf_add(url, src, (Py_ssize_t)n) < 0) return NULL;
    } else if (src[0] == '/' && !(n > 1 && src[1] == '/') && im->origin != NULL) {
        if (buf_add(url, im->origin, im->origin_len) < 0 || buf_add(url, src, (Py_ssize_t)n) < 0) return NULL;
    } else {
        return NULL;
    }
    const char *hash = memchr(url->data, '#', (size_t)url->len);
    Py_ssize_t url_len = hash ? hash - url->data : url->len;

    PyObject *alt = NULL;
    v = attr_value(element, "alt", &found);
    if (v == NULL || v->length == 0) {
        alt = Py_NewRef(Py_None);
    } else {
        im->text.len = im->ends.len = 0;
        Py_ssize_t end = (Py_ssize_t)v->length;
        if (buf_add(&im->text, v->data, end) < 0 || buf_add(&im->ends, &end, sizeof end) < 0) return NULL;
        if ((alt = collapse(&im->text, &im->ends, &im->scratch)) == NULL) return NULL;
    }
    PyObject *py_url = PyUnicode_DecodeASCII(url->data, url_len, NULL);
    PyObject *py_src = PyUnicode_DecodeASCII((const char *)src, (Py_ssize_t)n, NULL);
    PyObject *width = declared_size(attr_value(element, "width", &found));
    PyObject *height = declared_size(attr_value(element, "height", &found));
    PyObject *image = NULL;
    if (py_url && py_src && width && height) {
        image = PyObject_CallFunctionObjArgs(im->image_type, py_url, py_src, alt, width, height, NULL);
    }
    Py_DECREF(alt);
    Py_XDECREF(py_url);
    Py_XDECREF(py_src);
    Py_XDECREF(width);
    Py_XDECREF(height);
    if (image == NULL && !PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "the image could not be made");
    return image;
}

/* The image of an <img> (Py_None when it names none), or NULL with an exception. */
static PyObject *image_of(Images *im, const lxb_dom_element_t *element, PyObject *attrs) {
    PyObject *image = common_image(im, element);
    if (image != NULL || PyErr_Occurred()) return image;
    PyObject *made = attrs ? Py_NewRef(attrs) : attrs_dict(element);
    if (made == NULL) return NULL;
    image = PyObject_CallFunctionObjArgs(im->image_ref, made, im->base, NULL);
    Py_DECREF(made);
    return image;
}

#define END ((lxb_dom_node_t *)1)  /* on the stack: a block element's subtree ends here */

static int push(Buf *stack, lxb_dom_node_t *node) { return buf_add(stack, &node, sizeof node); }

/* "/".join(base.split("/", 3)[:3]) where base is an ASCII http(s) URL whose origin is
 * longer than "https://" (resolve_url's shortcut), else NULL. */
static const char *origin_of(PyObject *base, Py_ssize_t *len) {
    if (!PyUnicode_IS_ASCII(base)) return NULL;
    const char *s = (const char *)PyUnicode_DATA(base);
    Py_ssize_t n = PyUnicode_GET_LENGTH(base), slashes = 0, i;
    if (!starts((const lxb_char_t *)s, (size_t)n, "https://") && !starts((const lxb_char_t *)s, (size_t)n, "http://")) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (s[i] == '/' && ++slashes == 3) break;
    }
    *len = i;
    return i > 8 ? s : NULL;
}

/* walk(body, base, kinds, text_block, image_type, image_ref, is_boilerplate, out) */
static PyObject *walk(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned long long address;
    PyObject *base, *kinds, *text_block, *image_type, *image_ref, *is_boilerplate, *out;
    if (!PyArg_ParseTuple(args, "KUSOOOOO!:walk", &address, &base, &kinds, &text_block, &image_type, &image_ref,
                          &is_boilerplate, &PyList_Type, &out)) {
        return NULL;
    }
    const unsigned char *kind_of = (const unsigned char *)PyBytes_AS_STRING(kinds);
    const uintptr_t n_kinds = (uintptr_t)PyBytes_GET_SIZE(kinds);
    Blocks blocks = {{0}, {0}, {0}, text_block, out};
    Images images = {image_type, image_ref, base, NULL, 0, {0}, {0}, {0}, {0}};
    images.origin = origin_of(base, &images.origin_len);
    Buf stack = {0};
    int failed = 0;
    lxb_dom_node_t *node = ((lxb_dom_node_t *)(uintptr_t)address)->first_child;

    while (!failed) {
        if (node == NULL) {
            if (stack.len == 0) break;
            stack.len -= (Py_ssize_t)sizeof node;
            memcpy(&node, stack.data + stack.len, sizeof node);
            if (node == END) {
                if (blocks.text.len && flush(&blocks) < 0) failed = 1;
                stack.len -= (Py_ssize_t)sizeof node;
                memcpy(&node, stack.data + stack.len, sizeof node);
            }
            continue;
        }
        uintptr_t tag = node->local_name;
        int kind = tag < n_kinds ? kind_of[tag] : K_OTHER;
        if (kind == K_TEXT) {
            if (node->type == LXB_DOM_NODE_TYPE_TEXT) {
                const lexbor_str_t *data = &((const lxb_dom_character_data_t *)node)->data;
                if (data->data != NULL) {
                    Py_ssize_t end;
                    if (buf_add(&blocks.text, data->data, (Py_ssize_t)data->length) < 0) break;
                    end = blocks.text.len;
                    if (buf_add(&blocks.ends, &end, sizeof end) < 0) break;
                }
            }
            node = node->next;
            continue;
        }
        if (kind == K_SKIP) {
            node = node->next;
            continue;
        }
        const lxb_dom_element_t *element = node->type == LXB_DOM_NODE_TYPE_ELEMENT ? (const lxb_dom_element_t *)node
                                                                                 : NULL;
        PyObject *attrs = NULL;
        if (element != NULL && has_boilerplate_key(element)) {
            if ((attrs = attrs_dict(element)) == NULL) break;
            PyObject *verdict = PyObject_CallOneArg(is_boilerplate, attrs);
            int skip = verdict == NULL ? -1 : PyObject_IsTrue(verdict);
            Py_XDECREF(verdict);
            if (skip != 0) {
                Py_DECREF(attrs);
                if (skip < 0) break;
                node = node->next;
                continue;
            }
        }
        if (kind == K_IMAGE) {
            PyObject *image = element != NULL ? image_of(&images, element, attrs)
                                              : PyObject_CallFunctionObjArgs(image_ref, attrs, base, NULL);
            Py_XDECREF(attrs);
            if (image == NULL) break;
            if (image != Py_None) {
                if ((blocks.text.len && flush(&blocks) < 0) || PyList_Append(out, image) < 0) {
                    Py_DECREF(image);
                    break;
                }
            }
            Py_DECREF(image);
            node = node->next;
            continue;
        }
        Py_XDECREF(attrs);
        lxb_dom_node_t *child = node->first_child;
        if (kind == K_BLOCK && blocks.text.len && flush(&blocks) < 0) break;
        if (child == NULL) {
            node = node->next;
            continue;
        }
        if (push(&stack, node->next) < 0 || (kind == K_BLOCK && push(&stack, END) < 0)) break;
        node = child;
    }
    if (!PyErr_Occurred() && blocks.text.len) flush(&blocks);
    Buf *bufs[] = {&blocks.text, &blocks.ends, &blocks.scratch, &images.scratch, &images.url, &images.text,
                   &images.ends, &stack};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) PyMem_Free(bufs[i]->data);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(body_address, base, kinds, text_block, image_type, image_ref, is_boilerplate, out): append the blocks and images "
     "under the <body> at body_address (selectolax's Node.mem_id) to out, as extract.py's _walk does."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_walk", "The compiled reading-order walk (see extract.py).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__walk(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SELECTOLAX_VERSION", VLC_SELECTOLAX_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
