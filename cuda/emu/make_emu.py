#!/usr/bin/env python3
"""Rewrites cuda/*.cu into plain C++ for the host emulation (see cuda_runtime.h).

Only kernel launches change: `kernel<<<grid, block, smem, stream>>>(args);` becomes
`::emu::launch(grid, block, smem, stream, [&] { kernel(args); });`. Everything else --
the kernels themselves -- is compiled as written.

    python3 make_emu.py OUT_DIR cuda/estep.cu cuda/em_stats.cu ...
"""

import pathlib
import sys


def balanced(text, start, open_ch="(", close_ch=")"):
    """Index just past the bracket group that opens at text[start]."""
    assert text[start] == open_ch, text[start:start + 40]
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced brackets")


def rewrite(src: str) -> str:
    out, pos, count = [], 0, 0
    while True:
        i = src.find("<<<", pos)
        if i < 0:
            break
        line_start = src.rfind("\n", 0, i) + 1
        indent = len(src[line_start:i]) - len(src[line_start:i].lstrip())
        kernel = src[line_start + indent:i]
        j = src.index(">>>", i)
        config = src[i + 3:j]
        k = j + 3
        end = balanced(src, k)
        args = src[k:end]
        assert src[end] == ";", src[end:end + 20]
        out.append(src[pos:line_start + indent])
        out.append(f"::emu::launch({config}, [&] {{ {kernel}{args}; }});")
        pos = end + 1
        count += 1
    out.append(src[pos:])
    return "".join(out), count


def main():
    outdir = pathlib.Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[2:]:
        path = pathlib.Path(name)
        text, n = rewrite(path.read_text())
        (outdir / (path.stem + ".cpp")).write_text(f'#line 1 "{path}"\n' + text)
        print(f"{path}: {n} launches rewritten")


if __name__ == "__main__":
    main()
