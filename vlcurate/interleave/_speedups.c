/* The interleave extraction's compiled parts, each the twin of Python code that stays
 * the reference (and runs where this module is not built):
 *
 * - walk_tree: the reading-order walk of vlcurate/interleave/extract.py over the tree
 *   selectolax's Lexbor parser built (read only; nothing here allocates or frees a node);
 * - plain_image: which images documents.py's image_problem certainly passes.
 *
 * The walk is the Python walk (`_walk` in extract.py) step for step: the same kinds per tag
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
#include <structmember.h>

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

/* --- the value types -------------------------------------------------------------
 * TextBlock and ImageRef are slotted dataclasses without __post_init__: their __init__
 * sets each field's slot and nothing else. A Maker sets those slots itself, without a
 * call into Python per node; for a class that is not such a dataclass (its fields, in
 * __match_args__ order, not all slots), it calls the class. */
typedef struct {
    PyObject *cls;  /* a strong reference: the class these offsets are of */
    PyTypeObject *direct;  /* the class where its slots are set here, else NULL */
    Py_ssize_t offsets[8];
} Maker;

static Maker text_maker, image_maker;

static int maker_for(Maker *m, PyObject *cls, const char *const *fields, Py_ssize_t n) {
    if (m->cls == cls) return 0;
    Py_XDECREF(m->cls);
    m->cls = Py_NewRef(cls);
    m->direct = NULL;
    if (!PyType_Check(cls) || PyObject_HasAttrString(cls, "__post_init__") || n > 8) return 0;
    PyObject *match = PyObject_GetAttrString(cls, "__match_args__");
    int ok = match != NULL && PyTuple_Check(match) && PyTuple_GET_SIZE(match) == n;
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(match, i);
        ok = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, fields[i]) == 0;
        PyObject *d = ok ? PyObject_GetAttr(cls, name) : NULL;
        ok = d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) m->offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_XDECREF(d);
    }
    Py_XDECREF(match);
    PyErr_Clear();
    if (ok) m->direct = (PyTypeObject *)cls;
    return 0;
}

/* cls(*values), as its __init__ would make it. */
static PyObject *make(const Maker *m, PyObject *const *values, Py_ssize_t n) {
    if (m->direct == NULL) return PyObject_Vectorcall(m->cls, values, (size_t)n, NULL);
    PyObject *obj = m->direct->tp_alloc(m->direct, 0);
    if (obj == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) *(PyObject **)((char *)obj + m->offsets[i]) = Py_NewRef(values[i]);
    return obj;
}

static const char *const TEXT_FIELDS[] = {"text"};
static const char *const IMAGE_FIELDS[] = {"url", "src", "alt", "width", "height"};

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
        PyObject *block = make(&text_maker, &text, 1);
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

/* The value of the attribute `name`, NULL when the element has none or it has no value. */
static const lexbor_str_t *attr_value(const lxb_dom_element_t *element, const char *name) {
    size_t want = strlen(name);
    for (const lxb_dom_attr_t *attr = element->first_attr; attr != NULL; attr = attr->next) {
        size_t len;
        const lxb_char_t *have = attr_name(attr, &len);
        if (len == want && memcmp(have, name, len) == 0) {
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
 * An image whose source is plain ASCII (from a srcset only where each candidate's
 * descriptor is one plain width or density), resolved by resolve_url's own shortcut
 * (an absolute http(s) URL, or a root-relative one on an ASCII http(s) base), is made
 * here; any other goes to _image_ref. */

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
    PyObject *image_ref, *base;
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

/* A candidate's size when its descriptor is one plain width ("640w", up to 15 digits)
 * or density ("2x", "1.5x"), as _candidate_size gives it; -1 for any other descriptor,
 * valid or not, which is _candidate_size's to judge; -2 for one it drops (0w). */
static double plain_descriptor(const lxb_char_t *s, size_t n) {
    if (n < 2 || n > 24) return -1;
    size_t digits = 0, i = 0, dot = 0;
    char number[32];
    for (; i < n - 1; i++) {
        if (s[i] >= '0' && s[i] <= '9') {
            digits++;
        } else if (s[i] == '.' && s[n - 1] == 'x' && !dot && digits > 0 && i + 1 < n - 1) {
            dot = i;
        } else {
            return -1;
        }
    }
    if (digits == 0 || digits > 15 || (dot && !(s[dot + 1] >= '0' && s[dot + 1] <= '9'))) return -1;
    memcpy(number, s, n - 1);
    number[n - 1] = '\0';
    double size = strtod(number, NULL);  /* correctly rounded, as Python's float() */
    if (s[n - 1] == 'w') return dot ? -1 : size > 0 ? size : -2;
    return s[n - 1] == 'x' ? size : -1;
}

/* best_srcset of an ASCII srcset, parsed as srcset_candidates parses it: 1 with its URL
 * in *url, 0 when it names none, -1 when a candidate is not plain (_image_ref's then). */
static int plain_srcset(const lxb_char_t *s, size_t n, const lxb_char_t **url, size_t *url_len) {
    double best_size = -1.0;
    size_t i = 0;
    *url = NULL;
    while (i < n) {
        while (i < n && (ascii_space(s[i]) || s[i] == ',')) i++;
        size_t start = i;
        while (i < n && !ascii_space(s[i])) i++;
        size_t len = i - start;
        const lxb_char_t *d = NULL;
        size_t d_len = 0;
        if (len > 0 && s[start + len - 1] == ',') {
            while (len > 0 && s[start + len - 1] == ',') len--;
        } else {
            const lxb_char_t *comma = memchr(s + i, ',', n - i);
            size_t k = comma ? (size_t)(comma - s) : n;
            d = s + i;
            d_len = k - i;
            while (d_len > 0 && ascii_space(*d)) d++, d_len--;
            while (d_len > 0 && ascii_space(d[d_len - 1])) d_len--;
            i = k + 1;
        }
        if (len == 0) continue;
        double size = 1.0;
        if (d_len > 0) {
            size = plain_descriptor(d, d_len);
            if (size == -1) return -1;
            if (size == -2) continue;
        }
        if (size >= best_size) {
            *url = s + start;
            *url_len = len;
            best_size = size;
        }
    }
    return *url != NULL;
}

static int ascii_only(const lexbor_str_t *v) {
    for (size_t i = 0; i < v->length; i++) {
        if (v->data[i] >= 0x80) return 0;
    }
    return 1;
}

/* The image of `element` made here, Py_None when it names none, or NULL with no
 * exception set when it is not the common case. */
static PyObject *common_image(Images *im, const lxb_dom_element_t *element) {
    const lexbor_str_t *v;
    const lxb_char_t *src = NULL;
    size_t n = 0;
    static const char *const SRCSET_ATTRS[] = {"srcset", "data-srcset"};
    for (size_t i = 0; i < 2 && src == NULL; i++) {
        if ((v = attr_value(element, SRCSET_ATTRS[i])) == NULL || v->length == 0) continue;
        if (!ascii_only(v)) return NULL;
        int got = plain_srcset(v->data, v->length, &src, &n);
        if (got < 0) return NULL;
        if (got == 0 || starts(src, n, "data:")) src = NULL;
    }
    for (size_t i = 0; i < sizeof SOURCE_ATTRS / sizeof *SOURCE_ATTRS && src == NULL; i++) {
        if ((v = attr_value(element, SOURCE_ATTRS[i])) == NULL) continue;
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
        const lxb_char_t *host = (const lxb_char_t *)memchr(src, '/', n) + 2;  /* after "//" */
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
    v = attr_value(element, "alt");
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
    PyObject *width = declared_size(attr_value(element, "width"));
    PyObject *height = declared_size(attr_value(element, "height"));
    PyObject *image = NULL;
    if (py_url && py_src && width && height) {
        PyObject *values[] = {py_url, py_src, alt, width, height};
        image = make(&image_maker, values, 5);
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

/* walk_tree(body, base, kinds, text_block, image_type, image_ref, is_boilerplate, out) */
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
    Images images = {image_ref, base, NULL, 0, {0}, {0}, {0}, {0}};
    images.origin = origin_of(base, &images.origin_len);
    maker_for(&text_maker, text_block, TEXT_FIELDS, 1);
    maker_for(&image_maker, image_type, IMAGE_FIELDS, 5);
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
            /* a node that is no element has no attributes, so names no image */
            PyObject *image = element != NULL ? image_of(&images, element, attrs) : Py_NewRef(Py_None);
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

/* --- plain_image ------------------------------------------------------------------ */

static int small_int(PyObject *v, long long *out) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return *out >= -(1LL << 53) && *out <= (1LL << 53);  /* exact as a double */
}

/* str.lower() of an ASCII character (no C locale has a say). */
static inline char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

/* Whether the lower-cased ASCII `path` has a separator ([/_.-]) followed by one of the
 * '|'-separated `words`: documents.py's _FURNITURE_LOWER search. */
static int furniture(const char *path, Py_ssize_t n, const char *words, Py_ssize_t words_len) {
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = path[i];
        if (c != '/' && c != '_' && c != '.' && c != '-') continue;
        for (Py_ssize_t w = 0; w < words_len;) {
            const char *bar = memchr(words + w, '|', (size_t)(words_len - w));
            Py_ssize_t len = (bar ? bar - words : words_len) - w;
            if (len > 0 && i + 1 + len <= n) {
                Py_ssize_t k = 0;
                while (k < len && ascii_lower(path[i + 1 + k]) == words[w + k]) k++;
                if (k == len) return 1;
            }
            w += len + 1;
        }
    }
    return 0;
}

static int ends_lower(const char *s, Py_ssize_t n, const char *suffix) {
    Py_ssize_t k = (Py_ssize_t)strlen(suffix);
    if (n < k) return 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        if (ascii_lower(s[n - k + i]) != suffix[i]) return 0;
    }
    return 1;
}

/* plain_image(url, width, height, min_size, max_size, max_aspect_ratio, words) */
static PyObject *plain_image(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyBytes_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "plain_image(url, width, height, min_size, max_size, max_aspect_ratio, "
                                         "words: bytes)");
        return NULL;
    }
    PyObject *url = args[0];
    long long w = 0, h = 0, min_size, max_size, ratio_int;
    int has_w = args[1] != Py_None, has_h = args[2] != Py_None;
    if (!PyUnicode_Check(url) || !PyUnicode_IS_ASCII(url)) Py_RETURN_FALSE;
    if ((has_w && !small_int(args[1], &w)) || (has_h && !small_int(args[2], &h))) Py_RETURN_FALSE;
    if (!small_int(args[3], &min_size) || !small_int(args[4], &max_size)) Py_RETURN_FALSE;
    double ratio;
    if (PyFloat_CheckExact(args[5])) {
        ratio = PyFloat_AS_DOUBLE(args[5]);
    } else if (small_int(args[5], &ratio_int)) {
        ratio = (double)ratio_int;
    } else {
        Py_RETURN_FALSE;
    }
    /* the declared sizes, as image_problem judges them */
    if ((has_w && w <= 2) || (has_h && h <= 2)) Py_RETURN_FALSE;
    if (has_w && has_h) {
        long long small = w <= h ? w : h, large = w <= h ? h : w;
        if (small < min_size || large > max_size) Py_RETURN_FALSE;
        if ((double)large / (double)(small > 1 ? small : 1) > ratio) Py_RETURN_FALSE;
    } else if ((has_w ? w : has_h ? h : min_size) < min_size) {
        Py_RETURN_FALSE;
    }
    /* the path, as documents.py's _path takes it */
    const char *s = (const char *)PyUnicode_DATA(url);
    Py_ssize_t n = PyUnicode_GET_LENGTH(url), start = 0, end = n, slash = -1;
    for (Py_ssize_t i = 0; i + 1 < n; i++) {
        if (s[i] == '/' && s[i + 1] == '/') {
            start = i + 2;
            break;
        }
    }
    for (Py_ssize_t i = start; i < n; i++) {
        if (s[i] == '?' || s[i] == '#') {
            end = i;
            break;
        }
    }
    for (Py_ssize_t i = start; i < end; i++) {
        if (s[i] == '/') {
            slash = i;
            break;
        }
    }
    const char *path = slash >= 0 ? s + slash : s;
    Py_ssize_t path_len = slash >= 0 ? end - slash : 0;
    if (ends_lower(path, path_len, ".svg") || ends_lower(path, path_len, ".ico") ||
        ends_lower(path, path_len, ".cur")) {
        Py_RETURN_FALSE;
    }
    if (furniture(path, path_len, PyBytes_AS_STRING(args[6]), PyBytes_GET_SIZE(args[6]))) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static PyMethodDef methods[] = {
    {"plain_image", (PyCFunction)(void (*)(void))plain_image, METH_FASTCALL,
     "plain_image(url, width, height, min_size, max_size, max_aspect_ratio, words): True only where documents.py's "
     "image_problem finds no problem for certain (an ASCII URL whose path has none of the furniture words, '|'-"
     "separated in words, and sizes the rules take); False leaves it to image_problem."},
    {"walk_tree", walk, METH_VARARGS,
     "walk_tree(body_address, base, kinds, text_block, image_type, image_ref, is_boilerplate, out): append the "
     "blocks and images under the <body> at body_address (selectolax's Node.mem_id) to out, as extract.py's _walk "
     "does."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "The interleave extraction's compiled parts (see the file's comment).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SELECTOLAX_VERSION", VLC_SELECTOLAX_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
