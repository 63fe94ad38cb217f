"""The shell commands the documentation gives users: README.md, the Snakefile's header comment and
every docs/*.md, read as written so that tests can run them.

In Markdown a command is code: an inline span (`...`, which may wrap over lines), a fenced block
or an indented block. A chain (`a && b`, `a; b`) is split into its commands. In the Snakefile
header a command is a comment line starting with `snakemake`; two or more spaces separate it from
its description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Command:
    source: str  # the file it is written in, relative to the repository root
    text: str  # the command as written, on one line

    @property
    def program(self) -> str:
        """The first word that is not a VAR=value assignment."""
        return next(word for word in self.text.split() if not re.fullmatch(r"\w+=\S*", word))


FENCED = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INDENTED = re.compile(r"(?:^\n)((?:^(?: {4}|\t)[^\n]*\n)+)", re.MULTILINE)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")


def _split_chain(code: str) -> list[str]:
    commands = []
    for line in code.splitlines():
        for part in re.split(r"\s*(?:&&|;)\s*", line):
            part = " ".join(part.split())
            if part:
                commands.append(part)
    return commands


def markdown_commands(text: str) -> list[str]:
    """Every command in a Markdown text's code, in order of appearance within each kind."""
    code = [match[1] for match in FENCED.finditer(text)]
    rest = FENCED.sub("", text)
    code += [match[1] for match in INDENTED.finditer(rest)]
    rest = INDENTED.sub("\n", rest)
    # an inline span is one command even when the paragraph wraps it over lines
    code += [" ".join(match[1].split()) for match in INLINE.finditer(rest)]
    return [command for block in code for command in _split_chain(block)]


def snakefile_header_commands(text: str) -> list[str]:
    commands = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words = re.split(r"\s{2,}", line.lstrip("#").strip())[0]
        if words.startswith("snakemake"):
            commands.append(words)
    return commands


def documented_commands(root: Path = ROOT) -> list[Command]:
    """Every command written in README.md, the Snakefile header and docs/*.md, each once per file."""
    found = [Command("Snakefile", text) for text in snakefile_header_commands((root / "Snakefile").read_text())]
    for path in [root / "README.md"] + sorted((root / "docs").glob("*.md")):
        source = str(path.relative_to(root))
        found += [Command(source, text) for text in dict.fromkeys(markdown_commands(path.read_text()))]
    return found


if __name__ == "__main__":
    for command in documented_commands():
        print(f"{command.source}: {command.text}")
