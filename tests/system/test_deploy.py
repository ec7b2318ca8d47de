"""
The deployment files (Dockerfile, deploy/kubernetes/, deploy/systemd/)
checked so they never rot: parsed, the fields that matter checked, and the
command lines they run parsed by twistd's own options with our programs --
every flag must exist and every value be accepted (the secret files they
name are stood in for by files of the right shape).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from remotedialer.server._auth import hash_token

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
SYSTEMD = os.path.join(ROOT, "deploy", "systemd")


def _secret_content(name: str) -> str:
    """A stand-in of the right shape for the secret file C{name}."""
    if name == "clients":
        return f"agent-1 sha256:{hash_token('t')}\n"
    if name == "frontdoor-tokens":
        return f"sha256:{hash_token('f')}\n"
    if name == "peers":
        return "server-2:peer-token:ws://10.0.0.2:8123/connect\n"
    return "a-token-of-some-length\n"


class _ArgvCheck(SynchronousTestCase):
    def twistd(self, argv: list[str], options_class: type[usage.Options]) -> ServerOptions:
        """Parse C{argv} (twistd's options, then a program's) as twistd does."""
        config = ServerOptions()
        config.parseOptions(list(argv))
        return config


class KubernetesTests(_ArgvCheck):
    def setUp(self):
        super().setUp()
        self.documents = []
        for path in sorted(glob.glob(os.path.join(KUBE, "*.yaml"))):
            with open(path) as f:
                self.documents += [(os.path.basename(path), d) for d in yaml.safe_load_all(f) if d]
        self.by_kind: dict[str, list[dict]] = {}
        for _, document in self.documents:
            self.by_kind.setdefault(document["kind"], []).append(document)

    def one(self, kind: str) -> dict:
        [document] = self.by_kind[kind]
        return document

    def test_kustomization_lists_every_file(self):
        kustomization = self.one("Kustomization")
        files = {name for name, d in self.documents if d["kind"] != "Kustomization"}
        self.assertEqual(set(kustomization["resources"]), files)

    def test_deployment(self):
        deployment = self.one("Deployment")
        spec = deployment["spec"]
        self.assertGreaterEqual(spec["replicas"], 2)
        labels = spec["template"]["metadata"]["labels"]
        self.assertEqual(spec["selector"]["matchLabels"], labels)
        pod = spec["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(pod["securityContext"]["runAsUser"], 0)
        [container] = pod["containers"]
        security = container["securityContext"]
        self.assertFalse(security["allowPrivilegeEscalation"])
        self.assertTrue(security["readOnlyRootFilesystem"])
        self.assertEqual(security["capabilities"]["drop"], ["ALL"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        args = container["args"]

        def value(flag: str) -> str:
            return args[args.index(flag) + 1]

        # Probes on the admin endpoint's paths and port.
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")
        for probe in ("readinessProbe", "livenessProbe"):
            port = container[probe]["httpGet"]["port"]
            self.assertEqual(f"tcp:{ports[port]}", value("--admin-listen"))
        self.assertEqual(value("--listen"), f"tcp:{ports['tunnel']}")
        # A PROXY-protocol listener for a network load balancer, beside the plain one peers use.
        self.assertEqual(value("--also-listen"), f"haproxy:tcp:{ports['tunnel-proxied']}")
        self.assertEqual(value("--frontdoor-listen"), f"tcp:{ports['frontdoor']}")
        # The drain ends before the kubelet's kill.
        self.assertGreater(pod["terminationGracePeriodSeconds"], float(value("--drain-timeout")))
        # Peers: through the headless Service, ids IP:PORT.
        headless = [s for s in self.by_kind["Service"] if s["spec"].get("clusterIP") == "None"]
        self.assertEqual(len(headless), 1)
        headless_spec = headless[0]["spec"]
        self.assertTrue(headless_spec["publishNotReadyAddresses"])
        name, _, dns_port = value("--peers-dns").rpartition(":")
        self.assertTrue(name.startswith(headless[0]["metadata"]["name"] + "."), name)
        self.assertEqual(int(dns_port), ports["tunnel"])
        self.assertEqual([p["port"] for p in headless_spec["ports"]], [ports["tunnel"]])
        self.assertEqual(value("--id"), f"$(POD_IP):{ports['tunnel']}")
        # Every Service selects the pods and targets a named port of theirs.
        for service in self.by_kind["Service"]:
            self.assertEqual(service["spec"]["selector"], labels)
            for port in service["spec"]["ports"]:
                self.assertIn(port["targetPort"], ports)
        pdb = self.one("PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"], labels)
        self.assertLess(pdb["spec"]["maxUnavailable"], spec["replicas"])

    def test_load_balancer_example(self):
        """The commented NLB Service of services.yaml is a Service's fields, aimed at the PROXY listener."""
        with open(os.path.join(KUBE, "services.yaml")) as f:
            lines = f.read().splitlines()
        start = lines.index("#   metadata:")
        block = []
        for line in lines[start:]:
            if not line.startswith("#   "):
                break
            block.append(line[len("#   "):].split("  #")[0])
        example = yaml.safe_load("\n".join(block))
        annotations = example["metadata"]["annotations"]
        self.assertEqual(annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"], "*")
        self.assertEqual(example["spec"]["type"], "LoadBalancer")
        [port] = example["spec"]["ports"]
        [container] = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        self.assertIn(port["targetPort"], {p["name"] for p in container["ports"]})
        self.assertEqual(port["targetPort"], "tunnel-proxied")

    def test_args_are_accepted_by_the_program(self):
        """The Dockerfile's entrypoint plus the Deployment's args, as the container runs them."""
        deployment = self.one("Deployment")
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        secret = self.one("Secret")
        [volume] = pod["volumes"]
        self.assertEqual(volume["secret"]["secretName"], secret["metadata"]["name"])
        [mount] = container["volumeMounts"]
        self.assertEqual(mount["name"], volume["name"])
        self.assertTrue(mount["readOnly"])
        # The secret files: the Secret's own placeholders (they must parse too).
        directory = self.mktemp()
        os.makedirs(directory)
        for key, text in secret["stringData"].items():
            with open(os.path.join(directory, key), "w") as f:
                f.write(text)
        env = {"POD_IP": "10.1.2.3", "POD_NAMESPACE": "default"}
        self.assertEqual({e["name"] for e in container["env"]}, set(env))
        argv = []
        for arg in _entrypoint()[1:] + container["args"]:
            arg = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(arg))
            if arg.startswith(mount["mountPath"] + "/"):
                key = arg[len(mount["mountPath"]) + 1:]
                self.assertIn(key, secret["stringData"])  # a file the Secret has
                arg = os.path.join(directory, key)
            argv.append(arg)
        config = self.twistd(argv, server_tap.Options)
        self.assertEqual(config.subCommand, "remotedialer-server")
        self.assertTrue(config["nodaemon"])
        options = config.subOptions
        self.assertEqual(options["id"], "10.1.2.3:8123")
        self.assertEqual(options["peers_dns"][0], "remotedialer-peers.default.svc.cluster.local")


def _entrypoint() -> list[str]:
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    [line] = [line for line in text.splitlines() if line.startswith("ENTRYPOINT ")]
    return json.loads(line[len("ENTRYPOINT "):])


class DockerfileTests(SynchronousTestCase):
    def test_dockerfile(self):
        with open(os.path.join(ROOT, "Dockerfile")) as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^FROM python:3\.11-slim$")
        [user] = re.findall(r"(?m)^USER (\S+)$", text)
        self.assertNotIn(user.split(":")[0], ("0", "root"))
        self.assertRegex(text, r"(?m)^COPY \. /tmp/remotedialer$")
        self.assertRegex(text, r"pip install /tmp/remotedialer")
        self.assertEqual(_entrypoint(), ["twistd", "-n", "--pidfile=", "remotedialer-server"])
        with open(os.path.join(ROOT, ".dockerignore")) as f:
            ignored = set(f.read().split())
        self.assertLessEqual({".git", ".venv", "_trial_temp*"}, ignored)


def _unit(path: str) -> dict[str, list[str]]:
    """A systemd unit's settings (continuation lines joined), each key with all its values."""
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


class SystemdTests(_ArgvCheck):
    HARDENING = {"NoNewPrivileges": "yes", "DynamicUser": "yes", "ProtectSystem": "strict",
                 "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "",
                 "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}

    def _check(self, program: str, options_class: type[usage.Options]) -> ServerOptions:
        settings = _unit(os.path.join(SYSTEMD, f"remotedialer-{program}.service"))
        for key, value in self.HARDENING.items():
            self.assertEqual(settings.get(key), [value], key)
        self.assertEqual(settings["KillSignal"], ["SIGTERM"])
        credentials = self.mktemp()
        os.makedirs(credentials)
        for credential in settings.get("LoadCredential", []):
            name, _, source = credential.partition(":")
            self.assertTrue(source.startswith("/etc/remotedialer/"), source)
            with open(os.path.join(credentials, name), "w") as f:
                f.write(_secret_content(name))
        [exec_start] = settings["ExecStart"]
        argv = shlex.split(exec_start.replace("${CREDENTIALS_DIRECTORY}", credentials))
        self.assertTrue(argv[0].endswith("/bin/twistd"), argv[0])
        self.assertEqual(argv[1:4], ["-n", "--pidfile=", f"remotedialer-{program}"])
        for arg in argv:
            self.assertFalse(arg.startswith("/etc/remotedialer/"), f"{arg}: secrets come as credentials")
        config = self.twistd(argv[1:], options_class)
        self.assertEqual(config.subCommand, f"remotedialer-{program}")
        self._verify(program)
        return config

    def test_server_unit(self):
        config = self._check("server", server_tap.Options)
        self.assertEqual(config.subOptions["drain-timeout"], 30.0)

    def test_client_unit(self):
        config = self._check("client", client_tap.Options)
        self.assertEqual(config.subOptions["id"], "agent-1")

    def _verify(self, program: str) -> None:
        """systemd's own check of the unit, where systemd-analyze is installed."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            return
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(SYSTEMD, f"remotedialer-{program}.service")) as f:
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            text = f.read().replace("/opt/remotedialer/bin/twistd", twistd)
        path = os.path.join(directory, f"remotedialer-{program}.service")
        with open(path, "w") as f:
            f.write(text)
        result = subprocess.run([analyze, "verify", path], capture_output=True, text=True, timeout=30)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
