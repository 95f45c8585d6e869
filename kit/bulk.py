"""Accounts and courses in bulk, from the registrar's CSV files: checked here first (one
report with row numbers), then imported by Moodle's own upload CLIs
(admin/tool/uploaduser/cli/uploaduser.php, admin/tool/uploadcourse/cli/uploadcourse.php).
Row numbers are the file's line numbers, the header being line 1, as Moodle counts them.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Literal

from kit.errors import UsageError

Kind = Literal["users", "courses"]
REQUIRED = {"users": ("username", "firstname", "lastname", "email"), "courses": ("shortname", "fullname")}
#: Moodle's own rule for usernames (core_user::clean_field with PARAM_USERNAME): lower case,
#: digits, and - _ . @ only.
USERNAME = re.compile(r"^[a-z0-9_.@-]{1,100}$")
EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
COURSE_COLUMN = re.compile(r"^course\d+$")


@dataclass
class CsvCheck:
    kind: Kind
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]                        # (line number, row)
    errors: list[tuple[int, str]] = field(default_factory=list)   # (line number, what is wrong)

    @property
    def bad_lines(self) -> list[int]:
        return sorted({line for line, _ in self.errors})

    def keys(self) -> list[str]:
        key = "username" if self.kind == "users" else "shortname"
        return [row[key].strip().lower() if self.kind == "users" else row[key].strip() for _, row in self.rows]

    def good_keys(self) -> list[str]:
        bad = set(self.bad_lines)
        return [key for (line, _), key in zip(self.rows, self.keys(), strict=True) if line not in bad]

    def good_csv(self, *, skip: set[str] | None = None, fill: dict[str, str] | None = None) -> bytes:
        """The file without its bad rows (for --continue-on-errors) nor the keys in skip, as
        UTF-8; fill adds a column with one value where the file has none (e.g. auth)."""
        bad = set(self.bad_lines)
        extra = {k: v for k, v in (fill or {}).items() if k not in self.header}
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*self.header, *extra], lineterminator="\n")
        writer.writeheader()
        for (line, row), key in zip(self.rows, self.keys(), strict=True):
            if line not in bad and key not in (skip or set()):
                writer.writerow({**row, **extra})
        return out.getvalue().encode()


def read_csv(kind: Kind, raw: bytes, *, source: str) -> CsvCheck:
    """Decode and parse; refuse (one line) what no row-level report could describe."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UsageError(f"{source}: not UTF-8 (line {line}); save it as CSV UTF-8 and try again") from None
    if not text.strip():
        raise UsageError(f"{source}: empty")
    sample = text[:4096]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    if getattr(dialect, "delimiter", ",") != ",":
        raise UsageError(f"{source}: columns are separated by {dialect.delimiter!r}; the kit reads comma-separated "
                         "files (save as CSV UTF-8, comma-separated)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    missing = [c for c in REQUIRED[kind] if c not in header]
    if missing:
        raise UsageError(f"{source}: the header lacks the column(s) {', '.join(missing)} "
                         f"(it has: {', '.join(header) or 'nothing'})")
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise UsageError(f"{source}: the header repeats {', '.join(dupes)}")
    rows = []
    for row in reader:
        line = reader.line_num
        extra = row.pop(None, None)
        cleaned = {k: (v or "").strip() for k, v in row.items()}
        rows.append((line, cleaned))
        if extra:
            rows[-1] = (line, {**cleaned, "__extra__": "yes"})
    if not rows:
        raise UsageError(f"{source}: has a header but no rows")
    return CsvCheck(kind, header, rows)


def check_users(check: CsvCheck, *, auth: str, known_courses: set[str]) -> CsvCheck:
    """Row errors: duplicate or invalid usernames, malformed e-mails, a manual account without
    a password, enrolment columns naming a course that does not exist."""
    seen: dict[str, int] = {}
    needs_password = auth == "manual" and "password" not in check.header
    if needs_password:
        raise UsageError("the file has no password column: manual accounts need one (or import with "
                         "--auth ldap / oauth2, whose passwords are the directory's)")
    for line, row in check.rows:
        if row.pop("__extra__", None):
            check.errors.append((line, "more fields than the header has columns"))
        username = row["username"].lower()
        if not username:
            check.errors.append((line, "username is empty"))
        elif not USERNAME.match(username):
            check.errors.append((line, f"username {row['username']!r} has characters Moodle does not allow "
                                       "(a-z 0-9 - _ . @)"))
        elif username in seen:
            check.errors.append((line, f"username {username!r} is also on line {seen[username]}"))
        else:
            seen[username] = line
        for name in ("firstname", "lastname"):
            if not row[name]:
                check.errors.append((line, f"{name} is empty"))
        if not EMAIL.match(row["email"]):
            check.errors.append((line, f"e-mail {row['email']!r} is malformed"))
        if auth == "manual" and row.get("auth", "manual") in ("", "manual") and not row.get("password"):
            check.errors.append((line, "password is empty (a manual account)"))
        for column in (c for c in check.header if COURSE_COLUMN.match(c)):
            course = row.get(column, "")
            if course:
                if course not in known_courses:
                    check.errors.append((line, f"{column}: no course with short name {course!r}"))
    return check


def check_courses(check: CsvCheck) -> CsvCheck:
    seen: dict[str, int] = {}
    for line, row in check.rows:
        if row.pop("__extra__", None):
            check.errors.append((line, "more fields than the header has columns"))
        short = row["shortname"]
        if not short:
            check.errors.append((line, "shortname is empty"))
        elif short in seen:
            check.errors.append((line, f"shortname {short!r} is also on line {seen[short]}"))
        else:
            seen[short] = line
        if not row["fullname"]:
            check.errors.append((line, "fullname is empty"))
    return check


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    failed_lines: list[tuple[int, str]] = field(default_factory=list)


STAT = re.compile(r"^(Users|Courses) (created|updated|skipped|errors)\s*:\s*(\d+)\s*$|^Errors\s*:\s*(\d+)\s*$")
LINE = re.compile(r"^Line (\d+)\s*$")
ERROR = re.compile(r"^\s+Error: (.*)$")


def parse_moodle_output(text: str) -> ImportResult:
    """Counts and failed rows from the upload CLIs' own report (their stats lines and their
    "Line N" / "  Error: ..." rows)."""
    result = ImportResult()
    line = 0
    for raw in text.splitlines():
        if match := LINE.match(raw):
            line = int(match.group(1))
        elif (match := ERROR.match(raw)) and line:
            result.failed_lines.append((line, match.group(1).strip()))
        elif match := STAT.match(raw.strip()):
            if match.group(4) is not None:
                result.failed = int(match.group(4))
            else:
                what = match.group(2)
                setattr(result, "failed" if what == "errors" else what, int(match.group(3)))
    return result
