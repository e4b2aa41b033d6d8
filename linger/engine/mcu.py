"""The C engine on a Cortex-M4: cross-compile, measure code size, run on an emulated board.

Tools (Debian): ``apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm``.
The board is QEMU's ``mps2-an386`` (Arm MPS2 AN386, Cortex-M4); the startup code and the
linker script are the toolchain's own examples (``/usr/share/doc/gcc-arm-none-eabi/examples``),
the script's memory map set to the board's (4 MiB code SSRAM at 0, 1 MiB data at 0x20000000).
Files reach the program through semihosting (``--specs=rdimon.specs``: ``fopen`` opens the host's
files); ``device/mcu_main.c`` reads ``model.bin`` and ``input.bin`` and writes ``output.bin``.

Code size per op set: ``device/size_main.c`` links the engine without any C library I/O
(``-Os -ffunction-sections -Wl,--gc-sections``); an empty program built the same way is
subtracted. ``python -m linger.engine.mcu`` prints the table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from . import CSRC, engine_sources

GCC, SIZE, QEMU = "arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"
EXAMPLES = "/usr/share/doc/gcc-arm-none-eabi/examples"
DEVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "device")
CPU = ("-mcpu=cortex-m4", "-mthumb")
CFLAGS = CPU + ("-Os", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror",
                "-ffunction-sections", "-fdata-sections")
#: op sets: families left out of the registry (registry.c's LE_NO_* switches)
_NEW = ("ACT", "REDUCE", "RESAMPLE", "MASK")  # the families added for published networks
_LUNA = ("LUNA",)  # the original toolchain's algorithms, for imported models (k_luna.c)
OP_SETS = {
    "all ops": (),
    "CNN (conv, linear, pool, quant, layout, element-wise)": ("IQARITH", "NONLINEAR", "RNN",
                                                              *_NEW, *_LUNA),
    "CNN + iq arithmetic and non-linear tables": ("RNN", *_NEW, *_LUNA),
    "CNN + activations, reductions, resampling (MobileNetV3, PANNs)": ("IQARITH", "NONLINEAR",
                                                                       "RNN", "MASK", *_LUNA),
    "RNN (GRU/LSTM, linear, quant, layout, element-wise)": ("CONV", "POOL", "IQARITH",
                                                             "NONLINEAR", *_NEW, *_LUNA),
    "imported original RNN (Luna LSTM/GRU/softmax/layer norm, LutInt, linear, quant, layout)":
        ("CONV", "POOL", "IQARITH", "NONLINEAR", "RNN", *_NEW),
}


def missing_tools() -> str | None:
    """Why the Cortex-M build cannot run here (None: everything is installed)."""
    missing = [t for t in (GCC, SIZE, QEMU) if shutil.which(t) is None]
    if not os.path.exists(os.path.join(EXAMPLES, "startup", "startup_ARMCM4.S")):
        missing.append(f"{EXAMPLES}/startup/startup_ARMCM4.S")
    if missing:
        return (f"Cortex-M tools missing ({', '.join(missing)}): apt-get install"
                f" gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
    return None


def _board_files(build_dir: str) -> list[str]:
    """The example startup code, a SystemInit, and the example linker script set to the
    mps2-an386 memory map."""
    with open(os.path.join(EXAMPLES, "ldscripts", "gcc.ld"), encoding="utf-8") as f:
        script = f.read()
    script, n = re.subn(r"MEMORY\s*\{[^}]*\}",
                        "MEMORY\n{\n  FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 0x00400000\n"
                        "  RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 0x00100000\n}", script)
    if n != 1:
        raise RuntimeError(f"{EXAMPLES}/ldscripts/gcc.ld has no MEMORY block to adapt")
    ld = os.path.join(build_dir, "mps2_an386.ld")
    with open(ld, "w", encoding="utf-8") as f:
        f.write(script)
    sysinit = os.path.join(build_dir, "system.c")
    with open(sysinit, "w", encoding="utf-8") as f:
        f.write("void SystemInit(void);\nvoid SystemInit(void) {}\n")
    startup = os.path.join(build_dir, "startup_ARMCM4.o")   # not ours: no -Werror for it
    subprocess.run([GCC, *CPU, "-D__STARTUP_CLEAR_BSS", "-c",
                    os.path.join(EXAMPLES, "startup", "startup_ARMCM4.S"), "-o", startup],
                   check=True, capture_output=True)
    return [startup, sysinit, "-T", ld]


def build_elf(build_dir: str, main_c: str, without=(), semihosting: bool = True,
              engine: bool = True, extra=()) -> str:
    """Cross-compile ``main_c`` (+ the engine unless ``engine=False``) for the board."""
    os.makedirs(build_dir, exist_ok=True)
    name = os.path.splitext(os.path.basename(main_c))[0] + "".join(f"-no{w.lower()}"
                                                                    for w in without)
    elf = os.path.join(build_dir, name + ".elf")
    specs = ("--specs=nano.specs", "--specs=rdimon.specs" if semihosting
             else "--specs=nosys.specs")
    cmd = [GCC, *CFLAGS, *(f"-DLE_NO_{w}" for w in without), *extra,
           "-I", CSRC, *_board_files(build_dir), main_c,
           *(engine_sources() if engine else []), *specs, "-Wl,--gc-sections", "-o", elf]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cross-compiling failed:\n$ {' '.join(cmd)}\n{res.stderr}")
    return elf


def size(elf: str) -> dict:
    """``{"text", "data", "bss"}`` bytes of an ELF (arm-none-eabi-size, Berkeley format)."""
    out = subprocess.run([SIZE, elf], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def code_sizes(build_dir: str | None = None) -> dict:
    """Engine code per op set: ``{op set: {"text", "data", "bss"}}`` over an empty program."""
    tmp = build_dir or tempfile.mkdtemp(prefix="linger-mcu-")
    empty_c = os.path.join(tmp, "empty.c")
    with open(empty_c, "w", encoding="utf-8") as f:
        f.write("int main(void) { return 0; }\n")
    base = size(build_elf(tmp, empty_c, semihosting=False, engine=False))
    out = {}
    for label, without in OP_SETS.items():
        s = size(build_elf(tmp, os.path.join(DEVICE, "size_main.c"), without,
                           semihosting=False))
        out[label] = {k: s[k] - base[k] for k in s}
    return out


def build_runner(build_dir: str) -> str:
    """The program that runs model.bin on input.bin (semihosting)."""
    return build_elf(build_dir, os.path.join(DEVICE, "mcu_main.c"))


def run_qemu(elf: str, workdir: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``elf`` on the emulated mps2-an386 with the host's ``workdir`` as current folder."""
    return subprocess.run([QEMU, "-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic",
                           "-semihosting", "-kernel", os.path.abspath(elf)], cwd=workdir,
                          capture_output=True, text=True, errors="replace", timeout=timeout)


def main() -> None:
    reason = missing_tools()
    if reason:
        raise SystemExit(reason)
    print(f"{'op set':58s} {'text':>7s} {'data':>5s} {'bss':>4s}  (bytes, {' '.join(CFLAGS[:3])})")
    for label, s in code_sizes().items():
        print(f"{label:58s} {s['text']:7d} {s['data']:5d} {s['bss']:4d}")


if __name__ == "__main__":
    main()
