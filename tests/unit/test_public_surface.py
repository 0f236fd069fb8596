import orchestrator
import runtimes.core


def test_orchestrator_exports() -> None:
    assert sorted(orchestrator.__all__) == sorted([
        "AsyncMLBridge", "CallResult", "Cancelled", "DeadlineExceeded", "Event", "FrameworkError",
        "InvalidArgument", "MLBridge", "MLBridgeError", "NotFound", "PermissionDenied", "QuotaExceeded",
        "Unauthenticated", "Unavailable", "UnknownCommand"])
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name)


def test_runtime_sdk_exports() -> None:
    assert "Bridge" in runtimes.core.__all__ and "command" in runtimes.core.__all__
    for name in runtimes.core.__all__:
        assert getattr(runtimes.core, name)


def test_errors_have_one_root() -> None:
    for name in ("Cancelled", "DeadlineExceeded", "FrameworkError", "NotFound", "PermissionDenied"):
        assert issubclass(getattr(orchestrator, name), orchestrator.MLBridgeError)


def test_core_imports_no_framework_or_orchestrator() -> None:
    import subprocess
    import sys

    code = ("import sys, runtimes.core.server, runtimes.mock; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('orchestrator', 'docker', 'dspy', 'langchain', 'transformers', 'torch', 'numpy')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
