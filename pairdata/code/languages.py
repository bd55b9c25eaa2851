"""The six CodeSearchNet languages: file extensions, extractors, and pinned offline sources.

Pins (Debian bookworm, npm, the running Python) are the versions the full build was measured
with; ``python -m pairdata build code`` fetches them into the source cache and records each
archive's sha256 in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from pairdata.code.docstrings import Function
from pairdata.code.treesitter import TreeSitterExtractor, TreeSitterSpec
from pairdata.sources import SourceSpec

LANGUAGES = ("python", "java", "go", "php", "ruby", "javascript")

_JS_WRAPPERS = frozenset(
    {
        "export_statement",
        "lexical_declaration",
        "variable_declaration",
        "expression_statement",
        "variable_declarator",
        "assignment_expression",
    }
)

TREE_SITTER_SPECS = {
    "java": TreeSitterSpec(
        language="java",
        module="tree_sitter_java",
        function="language",
        function_types=frozenset({"method_declaration"}),
        container_types=frozenset(
            {
                "class_declaration",
                "interface_declaration",
                "enum_declaration",
                "record_declaration",
                "annotation_type_declaration",
            }
        ),
        doc_style="block",
        excluded_names=frozenset({"toString", "equals", "hashCode", "clone", "finalize", "compareTo"}),
    ),
    "go": TreeSitterSpec(
        language="go",
        module="tree_sitter_go",
        function="language",
        function_types=frozenset({"function_declaration", "method_declaration"}),
        container_types=frozenset(),
        doc_style="line",
        line_marker="//",
        excluded_names=frozenset({"String", "Error", "GoString"}),
    ),
    "javascript": TreeSitterSpec(
        language="javascript",
        module="tree_sitter_javascript",
        function="language",
        function_types=frozenset({"function_declaration", "generator_function_declaration", "method_definition"}),
        expression_function_types=frozenset(
            {"function_expression", "function", "arrow_function", "generator_function"}
        ),
        container_types=frozenset({"class_declaration", "class"}),
        wrapper_types=_JS_WRAPPERS,
        doc_style="block",
        excluded_names=frozenset({"constructor", "toString", "valueOf", "toJSON"}),
    ),
    "php": TreeSitterSpec(
        language="php",
        module="tree_sitter_php",
        function="language_php",
        function_types=frozenset({"function_definition", "method_declaration"}),
        container_types=frozenset(
            {"class_declaration", "interface_declaration", "trait_declaration", "enum_declaration"}
        ),
        doc_style="block",
        excluded_names=frozenset(),
        dunder_excluded=True,
    ),
    "ruby": TreeSitterSpec(
        language="ruby",
        module="tree_sitter_ruby",
        function="language",
        function_types=frozenset({"method", "singleton_method"}),
        container_types=frozenset({"class", "module"}),
        doc_style="line",
        line_marker="#",
        excluded_names=frozenset(
            {
                "initialize",
                "to_s",
                "inspect",
                "to_str",
                "==",
                "eql?",
                "hash",
                "<=>",
                "method_missing",
                "respond_to_missing?",
            }
        ),
    ),
}

EXTENSIONS = {
    "python": (".py",),
    "java": (".java",),
    "go": (".go",),
    "php": (".php",),
    "ruby": (".rb",),
    "javascript": (".js", ".mjs", ".cjs"),
}

PYTHON_EXCLUDED = frozenset()  # every dunder is excluded through ``dunder_excluded``


@dataclass(frozen=True)
class LanguageInfo:
    """What the builder needs for one language."""

    language: str
    extensions: tuple[str, ...]
    excluded_names: frozenset[str]
    dunder_excluded: bool

    def extract(self, content: bytes) -> tuple[list[Function], bool]:
        """Documented functions of one file and whether it had syntax errors.

        Raises:
            SyntaxError, ValueError, UnicodeDecodeError: the file cannot be used at all.
        """
        if self.language == "python":
            from pairdata.code.python_ast import extract_python

            return extract_python(content.decode("utf-8")), False
        return TreeSitterExtractor(TREE_SITTER_SPECS[self.language]).extract(content)


def language_info(language: str) -> LanguageInfo:
    """The :class:`LanguageInfo` of a CodeSearchNet language name."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
    if language == "python":
        return LanguageInfo("python", EXTENSIONS["python"], PYTHON_EXCLUDED, True)
    spec = TREE_SITTER_SPECS[language]
    return LanguageInfo(language, EXTENSIONS[language], spec.excluded_names, spec.dunder_excluded)


NPM_BUNDLE_DIRS = ("build", "dist", "min", "amd", "cjs", "umd")
"""Folders of generated bundles in npm packages: copies of ``src/`` that would fill one split group."""


def _npm(package: str, version: str) -> SourceSpec:
    return SourceSpec(
        name=f"npm-{package}",
        kind="npm",
        package=package,
        version=version,
        subpath="package",
        group_depth=2,
        exclude=NPM_BUNDLE_DIRS,
    )


RAILS_VERSION = "2:6.1.7.10+dfsg-1~deb12u4"
RUBY_GEM_PACKAGES = (
    ("ruby-activesupport", RAILS_VERSION),
    ("ruby-activerecord", RAILS_VERSION),
    ("ruby-actionpack", RAILS_VERSION),
    ("ruby-actionview", RAILS_VERSION),
    ("rake", "13.0.6-3"),
    ("ruby-i18n", "1.10.0-2"),
)
"""Debian-packaged gems with RDoc-commented methods: libruby's stdlib alone gives under 2,000 pairs."""


def _debian_ruby_gem(package: str, version: str) -> SourceSpec:
    """A gem Debian installs under rubygems-integration; each gem folder is one split group."""
    return SourceSpec(
        name=package,
        kind="deb",
        package=package,
        version=version,
        subpath="usr/share/rubygems-integration/all/gems",
        group_depth=1,
    )


DEFAULT_CODE_SOURCES: dict[str, list[SourceSpec]] = {
    "python": [
        SourceSpec(
            name="cpython-stdlib",
            kind="python-stdlib",
            group_depth=1,
            exclude=("site-packages", "dist-packages", "lib-dynload"),
        ),
        SourceSpec(name="site-packages", kind="site-packages", group_depth=1),
    ],
    "java": [
        SourceSpec(
            name="openjdk-17-source",
            kind="deb",
            package="openjdk-17-source",
            version="17.0.21.1+2-1~deb12u1",
            subpath="usr/lib/jvm/openjdk-17/lib/src.zip",
            group_depth=3,
        ),
    ],
    "go": [
        SourceSpec(
            name="golang-1.19-src",
            kind="deb",
            package="golang-1.19-src",
            version="1.19.8-2",
            subpath="usr/share/go-1.19/src",
            group_depth=2,
        ),
    ],
    "php": [
        SourceSpec(
            name="mediawiki",
            kind="deb",
            package="mediawiki",
            version="1:1.39.17-1+deb12u2",
            subpath="usr/share/mediawiki",
            group_depth=2,
        ),
    ],
    "ruby": [
        SourceSpec(
            name="libruby3.1",
            kind="deb",
            package="libruby3.1",
            version="3.1.2-7+deb12u1",  # bookworm main: security updates replace their versions
            subpath="usr/lib/ruby/3.1.0",
            group_depth=1,
        ),
        *(_debian_ruby_gem(package, version) for package, version in RUBY_GEM_PACKAGES),
    ],
    "javascript": [
        _npm("three", "0.187.0"),
        _npm("lodash", "4.18.1"),
        _npm("async", "3.2.6"),
        _npm("jquery", "4.0.0"),
        _npm("ramda", "0.32.0"),
        _npm("axios", "1.21.1"),
        _npm("date-fns", "4.4.0"),
    ],
}
