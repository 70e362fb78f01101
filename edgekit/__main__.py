from edgekit import signals

signals.install()  # before the CLI's imports: a Ctrl-C while they load is an interrupt too, not a traceback
try:
    from edgekit.cli import main
except KeyboardInterrupt:
    signals.report()
    signals.leave()
main()
