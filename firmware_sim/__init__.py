"""Software device simulators that behave like the real firmware (see DESIGN.md section 1).

Three layers per device: a *model* (state and physics advanced by ``process(dt)`` on an
injected clock, no I/O), a *register interface* (the register map from ``configs/``, the
same YAML the controller reads) and a *transport adapter* (Modbus TCP, RTU on a serial port,
RTU over TCP). Faults are injected through a backdoor of its own. Runtime code of syncctl
never imports this package; ``syncctl sim`` and ``syncctl demo`` start it as a process.
"""
