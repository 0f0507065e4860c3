"""Pages generated when the site is built (mkdocs-gen-files), so they cannot drift from the code:
the CLI reference from edgeslm's real argument parser, and the exit-code table of the
troubleshooting page from ``errors.py``'s classes, docstrings and tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import mkdocs_gen_files

os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal's width: fix it for the site

from edgeslm import errors  # noqa: E402
from edgeslm.cli import MODULES, make_parser  # noqa: E402

# What to do for each error class; a class added to errors.py without a line here fails the build.
NEXT_STEP: dict[type[errors.EdgeslmError], str] = {
    errors.UsageError: "Read the message: it names the flags that cannot go together; `edgeslm CMD --help`.",
    errors.InvalidParameterError: "Bring the named value into the range the message gives.",
    errors.ModelfileError: "Fix the Modelfile line the message names ([Custom models](custom-models.md)).",
    errors.ContextOverflowError: "Shorten the prompt or raise `--ctx` (at most the model's trained context).",
    errors.ChatTemplateError: "The model's own template was refused; give one with a Modelfile `TEMPLATE`.",
    errors.InvalidNameError: "Names are `[host/][namespace/]model[:tag]`: ASCII letters, digits, `.`, `_`, `-`.",
    errors.InvalidModelFileError: "The file is damaged or hostile; nothing was stored. Fetch it again.",
    errors.BundleError: "The bundle failed verification; nothing was imported. Re-create or re-copy it.",
    errors.InputFileError: "Check the path: it must exist, be a file (or folder where asked) and be readable.",
    errors.OutputFileError: "Pick an output folder you can write to, with room on its disk.",
    errors.MissingExtraError: "Install the extra the message names, e.g. `pip install 'edgeslm[onnx]'`.",
    errors.ModelNotFoundError: "`edgeslm list` shows what is stored; `edgeslm pull NAME` fetches it.",
    errors.ResponseNotFoundError: "Send the whole conversation in `input`, or keep responses with `store`.",
    errors.StoreError: "The store kept its previous state; `edgeslm verify` reports what is wrong.",
    errors.IntegrityError: "A blob's bytes do not match its digest: `edgeslm verify`, then pull it again.",
    errors.ConflictError: "The name stands for other content; pick another name or pass `--force`.",
    errors.SourceError: "The source could not deliver: check the repo or package name, then retry.",
    errors.CatalogError: "A catalogue entry is malformed (a pinned file without its digest or size): fix "
    "`edgeslm/data/pinned.toml`, or reinstall edgeslm.",
    errors.OfflineError: "Connect (or unset `--offline` / `EDGESLM_OFFLINE`), or use a stored model.",
    errors.EngineError: "The runtime refused the model or failed; the message says why. Try `-v`.",
    errors.RunnerTimeoutError: "The runner missed its deadline and was stopped; retry, or lower `--parallel`.",
    errors.CapacityError: "No memory or slot free now: retry later, unload a model, or lower `--ctx`.",
    errors.OverBudgetError: "The model's memory plan is larger than it may use: `edgeslm plan` shows the parts; "
    "fewer slots, a smaller `--ctx`, `--kv-type q8_0`, a smaller variant or more `--max-memory`.",
    errors.AbortedError: "You declined the confirmation; pass `-y` to skip it.",
    errors.AuthenticationError: "Send a key: `Authorization: Bearer KEY` (`edgeslm keys add`).",
    errors.PermissionDeniedError: "The key's role may not do this, or the Host/Origin is not allowed.",
    errors.RequestTooLargeError: "The request body is over the server's limit; send less.",
    errors.UnsupportedMediaTypeError: "Send the body as JSON with `Content-Type: application/json`.",
    errors.EdgeslmError: "An unexpected edgeslm error: run again with `-v` and report the message.",
}


def subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser``, depth first, in the order --help lists them (aliases once)."""
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield child
                    yield from subcommands(child)


def cli_reference() -> str:
    parser = make_parser()
    lines = ["# CLI reference", "",
             "Generated from edgeslm's own argument parser each time this site is built; "
             "`edgeslm COMMAND --help` prints the same.", "",
             "```text", parser.format_help().rstrip(), "```", ""]  # fmt: skip
    groups = {command: module for module, _, commands in MODULES for command in commands}
    for child in subcommands(parser):
        depth = child.prog.count(" ")
        anchor = child.prog.removeprefix("edgeslm ").replace(" ", "-")
        lines += [f"{'#' * (depth + 1)} `{child.prog}` {{#{anchor}}}", ""]
        lines += ["```text", child.format_help().rstrip(), "```", ""]
    assert all(f"`edgeslm {command}`" in "\n".join(lines) for command in groups), "a command is missing"
    return "\n".join(lines)


def error_classes() -> list[type[errors.EdgeslmError]]:
    """Every error class errors.py defines, the base among them."""
    found = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.EdgeslmError)]
    missing = [cls.__name__ for cls in found if cls not in NEXT_STEP]
    if missing:
        raise SystemExit(f"docs/gen_pages.py: no next step for {', '.join(missing)}")
    return found


def exit_codes() -> str:
    rows = ["| exit | HTTP | error | what it means | what to do |", "|---:|---:|---|---|---|",
            "| 0 | 200 | — | success | — |"]  # fmt: skip
    table = [(errors.exit_code_for(cls()), errors.http_status_for(cls()), cls) for cls in error_classes()]
    for code, status, cls in sorted(table, key=lambda row: (row[0], row[2].__name__)):
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
        rows.append(f"| {code} | {status} | `{cls.__name__}` | {doc} | {NEXT_STEP[cls]} |")
    rows += ["| 2 | — | (argparse) | a flag or argument the parser does not know or cannot read | "
             "`edgeslm CMD --help` |",
             "| 130 | — | (Ctrl-C) | interrupted | Nothing half-written is kept; run it again. |"]  # fmt: skip
    return "\n".join(rows) + "\n"


with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write(cli_reference())

with mkdocs_gen_files.open("troubleshooting.md", "a") as f:
    f.write("\n" + exit_codes())
