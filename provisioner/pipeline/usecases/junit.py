"""JUnit XML for ops' CI (``--junit FILE``): one test case per node or step, so a CI
system shows what failed by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree as ET


@dataclass(frozen=True)
class Case:
    name: str
    classname: str
    failure: str | None = None  # a one-line message; ``detail`` is the element's text
    detail: str = ""
    skipped: str | None = None
    seconds: float = 0.0


def junit_xml(suite: str, cases: Sequence[Case]) -> str:
    root = ET.Element("testsuite", name=suite, tests=str(len(cases)),
                      failures=str(sum(1 for c in cases if c.failure is not None)),
                      skipped=str(sum(1 for c in cases if c.failure is None and c.skipped is not None)))
    for c in cases:
        case = ET.SubElement(root, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.2f}")
        if c.failure is not None:
            ET.SubElement(case, "failure", message=c.failure[:500]).text = c.detail or c.failure
        elif c.skipped is not None:
            ET.SubElement(case, "skipped", message=c.skipped[:500])
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
