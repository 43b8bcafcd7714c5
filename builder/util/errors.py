"""Exception types, one per failure class; each carries the file, package or setting at fault."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

from mkosi_initrd_builder.util.urls import redact


class BuilderError(Exception):
    """Base class: a failure the user can act on. `hint` is printed after the message."""

    hint: Optional[str] = None

    def __init__(self, message: str, *, hint: Optional[str] = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class VariantError(BuilderError):
    """A variant file is missing, malformed, or has an invalid or unknown key."""

    def __init__(self, path: Path, message: str, *, key: Optional[str] = None) -> None:
        self.path = path
        self.key = key
        where = f"{path}: {key}" if key else f"{path}"
        super().__init__(f"{where}: {message}")


class RepositoryError(BuilderError):
    """The package repository is missing, empty, or lacks usable repodata."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(f"repository {path}: {message}")


class PackageMissingError(BuilderError):
    """A package a variant needs is not in the repository."""

    def __init__(self, packages: Sequence[str], repo: Path, *, variant: Optional[str] = None) -> None:
        self.packages = list(packages)
        self.repo = repo
        who = f"variant {variant!r} needs" if variant else "needed"
        super().__init__(f"{who} {', '.join(self.packages)}, not found in repository {repo}")


class KernelNotFoundError(BuilderError):
    """No package in the repository ships /usr/lib/modules/<KVER>/."""

    def __init__(self, kernel_version: str, repo: Path, available: Sequence[str]) -> None:
        self.kernel_version = kernel_version
        self.available = list(available)
        have = ", ".join(self.available) if self.available else "none"
        super().__init__(
            f"kernel {kernel_version} not found in repository {repo} (kernel versions available: {have})"
        )


class ToolMissingError(BuilderError):
    """An external program the build needs is not installed."""

    hint = "run 'make setup' to install the tools"

    def __init__(self, tool: str, detail: str = "") -> None:
        self.tool = tool
        super().__init__(f"{tool} not found" + (f" ({detail})" if detail else ""))


class SandboxUnavailableError(BuilderError):
    """mkosi's namespaces cannot be created in this context (a chroot: mock's simple isolation)."""


class CommandError(BuilderError):
    """An external command failed; carries its argv, the tail of its output and, for long-running
    commands whose output is logged (mkosi), the first error-looking lines and the full log's path."""

    def __init__(self, argv: Sequence[str], returncode: int, output_tail: str = "", *,
                 log: Optional[Path] = None, errors: Sequence[str] = ()) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        self.log = log
        self.errors = tuple(errors)
        msg = f"{Path(self.argv[0]).name} failed with exit status {returncode}"
        if key := self.key_line():
            msg += f": {key}"
        msg += "\n  command: " + " ".join(self.argv)
        if self.errors:
            msg += "\n  first error lines:\n" + "\n".join(f"    {line}" for line in self.errors)
        if output_tail:
            msg += "\n  output (last lines):\n" + "\n".join(f"    {line}" for line in output_tail.splitlines())
        if log is not None:
            msg += f"\n  full output: {log}"
        super().__init__(msg)

    def key_line(self) -> str:
        """The line of output most likely to say what went wrong: the first error line when they were
        collected, else the last line of the tail mentioning an error."""
        if self.errors:
            return self.errors[0].strip()
        lines = [line.strip() for line in self.output_tail.splitlines() if line.strip()]
        for line in reversed(lines):
            if "error" in line.lower() or "not found" in line.lower() or "no match" in line.lower():
                return line
        return lines[-1] if lines else ""


class SizeBudgetError(BuilderError):
    """An image is larger than its variant's size budget."""


class OutputError(BuilderError):
    """The output location cannot be written."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(f"output {path}: {message}")


class LocalWriteError(BuilderError):
    """A local file system refused a write (full, read-only, over quota, not permitted). It is the
    machine's problem, not the source's or the network's: never retried, and named by the directory
    the user chose (the destination, the cache, the output) so the fix is obvious."""

    def __init__(self, role: str, path: Path, reason: str, *, detail: str = "") -> None:
        self.role = role
        self.path = path
        self.reason = reason
        super().__init__(f"cannot write {role} {path}: {reason}" + (f" ({detail})" if detail else ""))


class VerifyError(BuilderError):
    """A built image does not match its manifest or is malformed."""


class BootError(BuilderError):
    """An image did not boot to the marker in QEMU."""


class StagingError(BuilderError):
    """Staging a repository failed; the message names the package, file or URL at fault."""


class VariantBuildError(BuilderError):
    """One or more variants failed; each entry maps the variant name to its error."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        self.failures = failures
        lines = [f"{len(failures)} variant(s) failed: {', '.join(sorted(failures))}"]
        for name in sorted(failures):
            text = str(failures[name]) or type(failures[name]).__name__
            first, *rest = text.splitlines()
            lines.append(f"  {name}: {first}")
            lines += [f"    {line}" for line in rest]
        super().__init__("\n".join(lines))


class SpecError(BuilderError):
    """The spec cannot be rendered or read back: a template mistake, or a file that is not a rendered spec."""


class BumpError(BuilderError):
    """A bump would not produce a newer package, or would change nothing."""


class SettingError(StagingError):
    """A setting of a staging request has a value staging cannot use. `setting` is the request's own
    name for it; the library's message uses that name, and each front end that catches the error
    respells it the way its users write it (a CLI flag, a plugin configuration key)."""

    def __init__(self, setting: str, reason: str, *, spelling: Optional[str] = None) -> None:
        self.setting = setting
        self.reason = reason
        super().__init__(f"{spelling or setting.replace('_', ' ')}: {reason}")

    def spelled(self, spellings: Mapping[str, str]) -> "SettingError":
        """The same error, naming the setting as `spellings` (setting -> spelling) does."""
        return SettingError(self.setting, self.reason, spelling=spellings.get(self.setting))


class UnsafeHrefError(StagingError):
    """A package location in the source's metadata points outside the repository."""

    def __init__(self, href: str, reason: str) -> None:
        self.href = href
        self.reason = reason
        super().__init__(f"refusing package location {redact(href)!r}: {redact(reason)}")


class FetchError(StagingError):
    """A file could not be fetched from the source (after the bounded retries, when retrying made sense)."""

    def __init__(self, url: str, reason: str, *, package: Optional[str] = None, attempts: int = 1,
                 status: Optional[int] = None) -> None:
        self.url = url
        self.package = package
        self.attempts = attempts
        self.status = status  # the HTTP status of the last try, when there was one
        what = f"{package} from {redact(url)}" if package else redact(url)
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"cannot fetch {what}: {reason}{tries}")


class VerificationError(StagingError):
    """A fetched RPM does not match what the repository metadata (or koji) says it is."""

    def __init__(self, package: str, origin: str, reason: str) -> None:
        self.package = package
        self.origin = origin
        super().__init__(f"{package} ({origin}) failed verification: {reason}")


class CacheError(StagingError):
    """The package cache directory cannot be used: it is not one the builder made, or its layout is damaged."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(f"cache {path}: {message}")


class DestinationBusyError(StagingError):
    """Another staging is writing the same destination right now (it holds the destination's lock)."""

    hint = "wait for the other staging to finish, or stage into another directory"

    def __init__(self, path: Path, holder: Optional[int]) -> None:
        self.path = path
        self.holder = holder
        who = f"pid {holder}" if holder is not None else "a process whose pid it has not yet recorded"
        super().__init__(f"destination {path} is being staged by another staging ({who}); refusing to write it "
                         "at the same time")


class ResolveError(StagingError):
    """The packages to stage cannot be determined: unknown names, unsatisfiable dependencies, no rpm database."""


class PluginConfigError(BuilderError):
    """The kojid plugin's configuration file has a bad or unknown key."""

    def __init__(self, path: Path, key: str, message: str) -> None:
        self.path = path
        self.key = key
        super().__init__(f"{path}: {key}: {message}")
