"""The fault harness of tools/fault-harness, split by job:

  common.py       constants, the slow-down hook, commands run in their own process groups (timeouts,
                  kills), the run's context (work and case folders, seeds), binary discovery, reporting
  oracles.py      byte comparisons; `bulwark disk read`/`check`, qemu-img and pyvhdi on finished images
  ops.py          fixtures built with the CLI and the operations (write, merge, convert, compact, resize)
  kill.py         kill-* scenarios: calibration and SIGKILL rounds
  faults.py       fault-* scenarios: strace error injection
  adversarial.py  adv-* scenarios
  main.py         the scenario table, the scenario runner, options and the summary (its docstring is --help)
"""
