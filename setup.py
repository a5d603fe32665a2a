"""Which files a wheel holds; everything else is in pyproject.toml.

The config tree stays in conf/ at the top of a checkout, where Hydra finds it beside the
package. A wheel carries it inside the package as bearcat/conf, so `pip install .` also
works outside the checkout (bearcat.CONFIG_DIR picks whichever is there). Each config
group folder is listed as a package of its own, found here rather than kept by hand."""
from pathlib import Path

from setuptools import find_namespace_packages, setup

groups = sorted(p for p in Path("conf").rglob("*") if p.is_dir())
conf = ["bearcat.conf"] + ["bearcat.conf." + ".".join(p.relative_to("conf").parts) for p in groups]
setup(
    packages=find_namespace_packages(include=["bearcat", "bearcat.*"], exclude=["*__pycache__"]) + conf,
    package_dir={"bearcat.conf": "conf"},
    package_data={"bearcat.server": ["page.html", "label.html"], **{name: ["*.yaml"] for name in conf}},
)
