"""The default data of the code-search and LLM jobs: pure-Python standard-library modules, split
by module; and the options that name other modules or a package instead.

Chosen because each gives the same number of query/code pairs on CPython 3.11, 3.12 and
3.13 (checked on 3.11.7, 3.12.1 and 3.13.0; a module's source may still change in small
ways between versions, and later versions may change the counts), imports on any platform
without optional C libraries, and gives two or more pairs. Every name is importable as is.
"""

from __future__ import annotations

import argparse

from ...runtime.errors import PolicyError

HELD_OUT = (
    "difflib",
    "email.message",
    "ftplib",
    "http.cookiejar",
    "shlex",
    "smtplib",
    "symtable",
    "tarfile",
    "textwrap",
    "urllib.parse",
    "wsgiref.handlers",
    "xml.dom.expatbuilder",
)

TRAIN = (
    "_pydecimal",
    "_pyio",
    "ast",
    "asyncio.coroutines",
    "asyncio.futures",
    "asyncio.locks",
    "asyncio.runners",
    "asyncio.selector_events",
    "asyncio.sslproto",
    "asyncio.streams",
    "asyncio.timeouts",
    "asyncio.transports",
    "calendar",
    "cmd",
    "code",
    "collections",
    "compileall",
    "concurrent.futures._base",
    "concurrent.futures.thread",
    "contextlib",
    "copyreg",
    "cProfile",
    "csv",
    "dataclasses",
    "email._header_value_parser",
    "email._parseaddr",
    "email._policybase",
    "email.base64mime",
    "email.charset",
    "email.encoders",
    "email.feedparser",
    "email.generator",
    "email.header",
    "email.headerregistry",
    "email.iterators",
    "email.parser",
    "email.quoprimime",
    "ensurepip",
    "filecmp",
    "fileinput",
    "fnmatch",
    "functools",
    "getpass",
    "gettext",
    "graphlib",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "html.parser",
    "http.cookies",
    "http.server",
    "imaplib",
    "json",
    "json.decoder",
    "json.encoder",
    "linecache",
    "logging.handlers",
    "modulefinder",
    "multiprocessing.managers",
    "multiprocessing.pool",
    "multiprocessing.process",
    "multiprocessing.reduction",
    "multiprocessing.resource_tracker",
    "multiprocessing.shared_memory",
    "multiprocessing.spawn",
    "multiprocessing.util",
    "netrc",
    "nturl2path",
    "numbers",
    "optparse",
    "pickle",
    "pickletools",
    "plistlib",
    "poplib",
    "pprint",
    "pstats",
    "pyclbr",
    "quopri",
    "rlcompleter",
    "sched",
    "secrets",
    "socket",
    "socketserver",
    "subprocess",
    "tempfile",
    "timeit",
    "tomllib._parser",
    "trace",
    "tracemalloc",
    "unittest.loader",
    "unittest.suite",
    "unittest.util",
    "urllib.robotparser",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "wsgiref.headers",
    "wsgiref.simple_server",
    "wsgiref.util",
    "xml.dom.domreg",
    "xml.dom.minidom",
    "xml.dom.pulldom",
    "xml.sax.handler",
    "xml.sax.saxutils",
    "xml.sax.xmlreader",
    "xmlrpc.client",
    "xmlrpc.server",
    "zipapp",
)


def add_module_arguments(parser: argparse.ArgumentParser) -> None:
    """``--train-modules``, ``--eval-modules``, ``--package``: the jobs' data, split by module."""
    data = parser.add_argument_group(
        "data (default: the standard library's modules, split by module)"
    )
    data.add_argument("--train-modules", nargs="+", metavar="MODULE", help="modules to train on")
    data.add_argument(
        "--eval-modules", nargs="+", metavar="MODULE", help="held-out modules to measure on"
    )
    data.add_argument(
        "--package",
        metavar="NAME",
        help="every module of an installed package, split by module (every 8th held out)",
    )


def module_fields(args: argparse.Namespace) -> dict:
    """The job config's module fields the options name (the config's defaults where none)."""
    if args.package and (args.train_modules or args.eval_modules):
        raise PolicyError(
            "--package takes the modules from the package: drop --train-modules / --eval-modules, "
            "or drop --package"
        )
    modules = {"package": args.package}
    if args.train_modules:
        modules["train_modules"] = tuple(args.train_modules)
    if args.eval_modules:
        modules["eval_modules"] = tuple(args.eval_modules)
    return modules
