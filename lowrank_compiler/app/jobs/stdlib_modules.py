"""The default data of the code-search job: pure-Python standard-library modules, split by module.

Chosen because each gives the same number of query/code pairs on CPython 3.11, 3.12 and
3.13 (checked on 3.11.7, 3.12.1 and 3.13.0; a module's source may still change in small
ways between versions, and later versions may change the counts), imports on any platform
without optional C libraries, and gives two or more pairs. Every name is importable as is.
"""

HELD_OUT = (
    "difflib", "email.message", "ftplib", "http.cookiejar", "shlex", "smtplib", "symtable", "tarfile", "textwrap",
    "urllib.parse", "wsgiref.handlers", "xml.dom.expatbuilder",
)

TRAIN = (
    "_pydecimal", "_pyio", "ast", "asyncio.coroutines", "asyncio.futures", "asyncio.locks", "asyncio.runners",
    "asyncio.selector_events", "asyncio.sslproto", "asyncio.streams", "asyncio.timeouts", "asyncio.transports",
    "calendar", "cmd", "code", "collections", "compileall", "concurrent.futures._base", "concurrent.futures.thread",
    "contextlib", "copyreg", "cProfile", "csv", "dataclasses", "email._header_value_parser", "email._parseaddr",
    "email._policybase", "email.base64mime", "email.charset", "email.encoders", "email.feedparser",
    "email.generator", "email.header", "email.headerregistry", "email.iterators", "email.parser",
    "email.quoprimime", "ensurepip", "filecmp", "fileinput", "fnmatch", "functools", "getpass", "gettext",
    "graphlib", "hashlib", "heapq", "hmac", "html", "html.parser", "http.cookies", "http.server", "imaplib", "json",
    "json.decoder", "json.encoder", "linecache", "logging.handlers", "modulefinder", "multiprocessing.managers",
    "multiprocessing.pool", "multiprocessing.process", "multiprocessing.reduction",
    "multiprocessing.resource_tracker", "multiprocessing.shared_memory", "multiprocessing.spawn",
    "multiprocessing.util", "netrc", "nturl2path", "numbers", "optparse", "pickle", "pickletools", "plistlib",
    "poplib", "pprint", "pstats", "pyclbr", "quopri", "rlcompleter", "sched", "secrets", "socket", "socketserver",
    "subprocess", "tempfile", "timeit", "tomllib._parser", "trace", "tracemalloc", "unittest.loader",
    "unittest.suite", "unittest.util", "urllib.robotparser", "warnings", "wave", "weakref", "webbrowser",
    "wsgiref.headers", "wsgiref.simple_server", "wsgiref.util", "xml.dom.domreg", "xml.dom.minidom",
    "xml.dom.pulldom", "xml.sax.handler", "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server",
    "zipapp",
)
