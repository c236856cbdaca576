"""Packaging hook: installs ``hymba-lm-eval.pth`` at the top of site-packages so that lm-eval
finds ``--model hymba`` (see ``src/_hymba_lm_eval.py``). All metadata is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "hymba-lm-eval.pth"
# One line, run by Python's site module at start-up; silent if the hook module is gone.
PTH_LINE = (
    "import importlib.util; "
    "importlib.util.find_spec('_hymba_lm_eval') and __import__('_hymba_lm_eval')\n"
)


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        # Editable wheels (PEP 660) are assembled from the install folder, not build_lib.
        folder = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        Path(folder).mkdir(parents=True, exist_ok=True)
        Path(folder, PTH_NAME).write_text(PTH_LINE, encoding="utf-8")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, str(Path(self.build_lib, PTH_NAME))]


setup(cmdclass={"build_py": BuildPyWithPth})
