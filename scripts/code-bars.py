#!/usr/bin/env python3
"""Checks issue 19's code-shape bars on src/: no file over 500 lines and no
function over 80 lines outside `#[cfg(test)]` modules. Prints offenders and
exits 1 if there are any. A rough brace counter (strings and comments with
braces are rare in this code base), good enough for a bar."""
import pathlib, re, sys

MAX_FILE, MAX_FN = 500, 80
bad = []
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    lines = path.read_text().splitlines()
    if len(lines) > MAX_FILE:
        bad.append(f"{path}: {len(lines)} lines (> {MAX_FILE})")
    depth, in_test, test_depth, stack = 0, False, 0, []
    pending_test = False
    for i, line in enumerate(lines):
        code = re.sub(r'"(\\.|[^"\\])*"', '""', line.split("//")[0])
        if "#[cfg(test)]" in code:
            pending_test = True
        m = re.search(r"\bfn\s+(\w+)", code)
        if m and not in_test and "{" in code[m.end():] + "".join(lines[i + 1 : i + 6]):
            stack.append((m.group(1), i, depth))
        for ch in code:
            if ch == "{":
                if pending_test and not in_test:
                    in_test, test_depth, pending_test = True, depth, False
                depth += 1
            elif ch == "}":
                depth -= 1
                if in_test and depth == test_depth:
                    in_test = False
                while stack and depth == stack[-1][2] and ch == "}":
                    name, start, _ = stack.pop()
                    n = i - start + 1
                    if n > MAX_FN:
                        bad.append(f"{path}:{start + 1}: fn {name} is {n} lines (> {MAX_FN})")
                    break
        if code.strip().endswith(";") and stack and stack[-1][1] == i:
            stack.pop()  # a declaration without a body
print("\n".join(bad) or "code bars: ok")
sys.exit(1 if bad else 0)
