/**
 * The Kubernetes manifests, as rendered by `kubectl kustomize` for each overlay: schema-valid,
 * and consistent with the server they deploy (ports, settings, drain time, memory).
 */
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import { CONFIG_VARIABLES, ConfigError, loadConfig, type Config } from '../../src/config';
import { SERVICE_NAME } from '../../src/server';
import { find, kubectlAvailable, OVERLAYS, quantity, readText, renderOverlay, selects, validateObject, type K8sObject, type Overlay } from '../helpers/deploy';
import { imageEnv, imageUser } from '../helpers/dockerfile';

// Typed views of the parts of the rendered objects the checks read.
interface Port {
  name?: string;
  containerPort?: number;
  port?: number | string;
  targetPort?: number | string;
  protocol?: string;
  appProtocol?: string;
}
interface Probe {
  grpc?: { port: number; service?: string };
  httpGet?: unknown;
  tcpSocket?: unknown;
  exec?: unknown;
  periodSeconds?: number;
  failureThreshold?: number;
}
interface SecurityContext {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  runAsGroup?: number;
  allowPrivilegeEscalation?: boolean;
  readOnlyRootFilesystem?: boolean;
  privileged?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
}
interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  ports: Port[];
  env?: { name: string; value?: string }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: unknown }[];
  startupProbe?: Probe;
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  resources: { requests: Record<string, string>; limits: Record<string, string> };
  securityContext: SecurityContext;
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
}
interface PodSpec {
  containers: Container[];
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  enableServiceLinks?: boolean;
  terminationGracePeriodSeconds?: number;
  securityContext: SecurityContext;
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  volumes?: Record<string, unknown>[];
}
interface DeploymentSpec {
  replicas: number;
  selector: { matchLabels: Record<string, string> };
  template: { metadata: { labels: Record<string, string> }; spec: PodSpec };
}

const MiB = 2 ** 20;

/**
 * The memory a pod needs for its settings, in MiB; the arithmetic the Deployment's comments
 * explain. Idle cost per interpreter: an isolate-mode interpreter holding one registration
 * measured 1.15 MiB of RSS (1,000 of them on one server); 1.25 leaves room.
 */
function memoryBudgetMiB(c: Config): number {
  const baseline = 128;
  const sharedHeaps = c.sharedIsolates * c.sharedIsolateMemoryMb;
  const idleInterpreters = c.maxInterpreters * 1.25;
  // Warm isolates are idle isolates with a context; warm contexts live in the shared heaps.
  const warmPool = c.warmIsolates * 1.25;
  const codeCache = c.codeCacheBytes / MiB;
  const workingHeaps = 4 * c.maxMemoryMb;
  return baseline + sharedHeaps + idleInterpreters + warmPool + codeCache + workingHeaps;
}

/** The variables the kubelet injects for each Service when enableServiceLinks is on. */
function serviceLinkEnv(services: K8sObject[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const svc of services) {
    const n = svc.metadata.name.toUpperCase().replace(/-/g, '_');
    const ports = (svc.spec as { ports: Port[] }).ports;
    env[`${n}_SERVICE_HOST`] = '10.0.0.1';
    env[`${n}_SERVICE_PORT`] = String(ports[0].port);
    env[`${n}_PORT`] = `tcp://10.0.0.1:${ports[0].port}`;
    for (const p of ports) {
      if (p.name) env[`${n}_SERVICE_PORT_${p.name.toUpperCase().replace(/-/g, '_')}`] = String(p.port);
      env[`${n}_PORT_${p.port}_TCP`] = `tcp://10.0.0.1:${p.port}`;
    }
  }
  return env;
}

const portOf = (address: string): number => Number(address.slice(address.lastIndexOf(':') + 1));

describe('Kubernetes manifests (deploy/k8s, rendered with kubectl kustomize)', function () {
  this.timeout(60_000);

  before(function () {
    if (!kubectlAvailable()) {
      if (process.env.CI) throw new Error('kubectl is required in CI to render the manifests');
      console.warn('\n  !!! kubectl not found: SKIPPING the Kubernetes manifest checks (CI runs them) !!!\n');
      this.skip();
    }
  });

  for (const overlay of OVERLAYS) {
    describe(`overlay ${overlay}`, () => {
      let objects: K8sObject[];
      let namespace: string;
      let deployment: K8sObject;
      let spec: DeploymentSpec;
      let pod: PodSpec;
      let container: Container;
      let settings: K8sObject;
      let config: Config;

      const containerPort = (ref: number | string | undefined): Port | undefined =>
        container.ports.find((p) => (typeof ref === 'number' ? p.containerPort === ref : p.name === ref));

      before(() => {
        objects = renderOverlay(overlay as Overlay);
        namespace = find(objects, 'Namespace').metadata.name;
        deployment = find(objects, 'Deployment', 'isogear');
        spec = deployment.spec as DeploymentSpec;
        pod = spec.template.spec;
        assert.equal(pod.containers.length, 1);
        container = pod.containers[0];
        const ref = container.envFrom?.find((e) => e.configMapRef)?.configMapRef?.name;
        settings = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === ref) as K8sObject;
        assert.ok(settings, `the ConfigMap the container reads (${ref}) is in the render`);
        config = loadConfig({ ...imageEnv(), ...(settings.data as Record<string, string>), ...Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value ?? ''])) });
      });

      it('renders every object the deployment needs, each once', () => {
        const kinds = objects.map((o) => o.kind).sort();
        // dev generates its Secret (a dev key); production's Secrets are created out of band, never in git
        const secrets = overlay === 'dev' ? ['Secret'] : [];
        assert.deepEqual(kinds, ['ConfigMap', 'ConfigMap', 'Deployment', 'Namespace', 'NetworkPolicy', 'PodDisruptionBudget', 'PrometheusRule', ...secrets, 'Service', 'ServiceAccount', 'ServiceMonitor']);
      });

      it('every object is valid against its Kubernetes or Prometheus Operator schema, with no unknown fields', () => {
        const problems = objects.flatMap(validateObject);
        assert.deepEqual(problems, []);
      });

      it('every namespaced object lands in the overlay namespace, which enforces Pod Security "restricted"', () => {
        for (const o of objects) if (o.kind !== 'Namespace') assert.equal(o.metadata.namespace, namespace, `${o.kind} ${o.metadata.name}`);
        assert.equal(find(objects, 'Namespace').metadata.labels?.['pod-security.kubernetes.io/enforce'], 'restricted');
      });

      it('the ConfigMap spells out every setting src/config.ts accepts, and nothing else, and together they load', () => {
        const data = settings.data as Record<string, string>;
        for (const name of Object.keys(data)) assert.ok(CONFIG_VARIABLES.includes(name), `${name} is not a setting src/config.ts knows`);
        const missing = CONFIG_VARIABLES.filter((v) => !(v in data));
        assert.deepEqual(missing, [], 'every setting is written down for operators: add new ones to deploy/k8s/base/isogear.env');
        // `config` loaded in before(): loadConfig throws on any invalid value or combination.
        assert.equal(config.logLevel, data.ISOGEAR_LOG_LEVEL);
      });

      it('service links are off: the kubelet would otherwise inject ISOGEAR_SERVICE_* variables the server refuses', () => {
        assert.equal(pod.enableServiceLinks, false);
        const injected = serviceLinkEnv(objects.filter((o) => o.kind === 'Service'));
        assert.throws(() => loadConfig({ ...(settings.data as Record<string, string>), ...injected }), (err: unknown) => err instanceof ConfigError && /ISOGEAR_/.test(err.message));
      });

      it('the container serves gRPC and metrics on the ports the settings bind', () => {
        assert.equal(containerPort('grpc')?.containerPort, portOf(config.grpcAddress));
        assert.equal(containerPort('metrics')?.containerPort, portOf(config.metricsAddress));
        assert.match(config.grpcAddress, /^0\.0\.0\.0:/, 'gRPC listens on all interfaces inside the pod');
        assert.match(config.metricsAddress, /^0\.0\.0\.0:/, 'metrics listen on all interfaces inside the pod');
      });

      it('startup, readiness and liveness are native gRPC probes on the plaintext health port the server binds, against the health service', () => {
        const healthPort = Number(config.healthAddress.split(':').pop());
        assert.equal(containerPort('health')?.containerPort, healthPort, 'the container declares the port ISOGEAR_HEALTH_ADDRESS binds');
        for (const [name, probe] of [
          ['startupProbe', container.startupProbe],
          ['readinessProbe', container.readinessProbe],
          ['livenessProbe', container.livenessProbe],
        ] as const) {
          assert.ok(probe?.grpc, `${name} is a gRPC probe`);
          assert.equal(probe.httpGet ?? probe.tcpSocket ?? probe.exec, undefined, `${name} has one handler`);
          assert.equal(containerPort(probe.grpc.port)?.name, 'health', `${name} probes the health port (a gRPC probe speaks neither TLS nor API keys)`);
        }
        assert.equal(container.readinessProbe?.grpc?.service, SERVICE_NAME, 'readiness asks about the service the server reports on');
      });

      it('the Service exposes gRPC (appProtocol grpc) and metrics, selecting the pod and targeting real container ports', () => {
        const svc = find(objects, 'Service', 'isogear');
        const s = svc.spec as { selector: Record<string, string>; ports: Port[] };
        assert.ok(selects(s.selector, spec.template.metadata.labels));
        const grpcPort = s.ports.find((p) => p.name === 'grpc');
        const metricsPort = s.ports.find((p) => p.name === 'metrics');
        assert.equal(grpcPort?.appProtocol, 'grpc');
        assert.ok(metricsPort);
        for (const p of s.ports) assert.ok(containerPort(p.targetPort), `Service port ${p.name} targets container port ${p.targetPort}`);
        assert.ok(selects(spec.selector.matchLabels, spec.template.metadata.labels), 'the Deployment selects its own pods');
      });

      it('the ServiceMonitor scrapes GET /metrics on the port the server serves metrics on, with the job the alert rules use', () => {
        const svc = find(objects, 'Service', 'isogear');
        const sm = find(objects, 'ServiceMonitor').spec as { selector: { matchLabels: Record<string, string> }; jobLabel?: string; endpoints: { port: string; path?: string }[] };
        assert.ok(selects(sm.selector.matchLabels, svc.metadata.labels), 'the ServiceMonitor selects the Service');
        assert.equal(sm.endpoints.length, 1);
        const svcPort = (svc.spec as { ports: Port[] }).ports.find((p) => p.name === sm.endpoints[0].port);
        assert.ok(svcPort, `the scraped port ${sm.endpoints[0].port} is a Service port`);
        assert.equal(containerPort(svcPort.targetPort)?.containerPort, portOf(config.metricsAddress));
        assert.equal(sm.endpoints[0].path ?? '/metrics', '/metrics');
        const job = sm.jobLabel ? svc.metadata.labels?.[sm.jobLabel] : svc.metadata.name;
        const rules = readText('deploy/prometheus/isogear.rules.yml');
        const jobs = new Set([...rules.matchAll(/job="([^"]+)"/g)].map((m) => m[1]));
        assert.deepEqual([...jobs], [job], 'the alert rules select the job Prometheus Operator gives the scrape');
      });

      it('the PrometheusRule carries exactly the rules promtool tests', () => {
        const rule = find(objects, 'PrometheusRule');
        const source = parse(readText('deploy/prometheus/isogear.rules.yml')) as { groups: unknown[] };
        assert.deepEqual((rule.spec as { groups: unknown[] }).groups, source.groups, 'run `npm run manifests` after changing the rules');
      });

      it('the Grafana dashboard ConfigMap carries the generated dashboard and the sidecar label', () => {
        const cm = find(objects, 'ConfigMap', 'isogear-dashboard');
        assert.equal(cm.metadata.name, 'isogear-dashboard', 'a fixed name, so an update replaces the dashboard');
        assert.equal(cm.metadata.labels?.grafana_dashboard, '1');
        const data = cm.data as Record<string, string>;
        assert.deepEqual(Object.keys(data), ['isogear.json']);
        assert.deepEqual(JSON.parse(data['isogear.json']), JSON.parse(readText('deploy/grafana/isogear.json')));
      });

      it('one replica, with the reason written where the count is set', () => {
        assert.equal(spec.replicas, 1);
        const file = overlay === 'production' ? 'deploy/k8s/overlays/production/deployment.yaml' : 'deploy/k8s/base/deployment.yaml';
        const text = readText(file);
        assert.match(text, /replicas: 1/);
        const comments = text.replace(/\n\s*#\s*/g, ' ').replace(/\s+/g, ' ');
        assert.match(comments, /not shared between replicas/);
      });

      it('terminationGracePeriodSeconds covers the preStop pause, the drain (ISOGEAR_SHUTDOWN_GRACE_MS) and disposal', () => {
        const preStop = container.lifecycle?.preStop?.exec?.command;
        const pauseMs = preStop && preStop[0] === 'sleep' ? Number(preStop[1]) * 1000 : 0;
        const needMs = pauseMs + config.shutdownGraceMs + 1000;
        assert.ok((pod.terminationGracePeriodSeconds ?? 30) * 1000 > needMs + 2000, `grace ${pod.terminationGracePeriodSeconds}s vs ${needMs} ms needed`);
      });

      it('memory is sized from the settings: request = limit >= the budget; the CPU limit covers the shared isolates', () => {
        const { requests, limits } = container.resources;
        assert.equal(quantity(requests.memory), quantity(limits.memory), 'memory request = limit');
        const budget = memoryBudgetMiB(config);
        const limitMiB = quantity(limits.memory) / MiB;
        assert.ok(limitMiB >= budget, `memory limit ${limitMiB} MiB < budget ${budget} MiB`);
        assert.ok(limitMiB <= budget * 1.25, `memory limit ${limitMiB} MiB is far above the budget ${budget} MiB: size it from the settings`);
        assert.ok(quantity(limits.cpu) >= config.sharedIsolates, 'CPU limit >= ISOGEAR_SHARED_ISOLATES');
        assert.ok(quantity(requests.cpu) <= quantity(limits.cpu));
      });

      it('meets Pod Security "restricted": non-root numeric user, no escalation, no capabilities, RuntimeDefault seccomp, read-only root', () => {
        const psc = pod.securityContext;
        const csc = container.securityContext;
        assert.equal(psc.runAsNonRoot ?? csc.runAsNonRoot, true);
        const uid = csc.runAsUser ?? psc.runAsUser;
        assert.ok(typeof uid === 'number' && uid > 0);
        assert.equal((csc.seccompProfile ?? psc.seccompProfile)?.type, 'RuntimeDefault');
        assert.equal(csc.allowPrivilegeEscalation, false);
        assert.equal(csc.readOnlyRootFilesystem, true);
        assert.notEqual(csc.privileged, true);
        assert.deepEqual(csc.capabilities?.drop, ['ALL']);
        assert.equal(csc.capabilities?.add, undefined);
        assert.ok(!pod.hostNetwork && !pod.hostPID && !pod.hostIPC);
        assert.ok(container.ports.every((p) => !('hostPort' in p)));
        const allowed = ['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret'];
        for (const v of pod.volumes ?? []) assert.ok(Object.keys(v).every((k) => k === 'name' || allowed.includes(k)), `volume ${String(v.name)}`);
        assert.ok(container.volumeMounts?.some((m) => m.mountPath === '/tmp'), 'a writable /tmp despite the read-only root');
      });

      it('the pod runs as the image user and mounts no service-account token', () => {
        const uid = container.securityContext.runAsUser ?? pod.securityContext.runAsUser;
        assert.equal(String(uid), imageUser().split(':')[0]);
        assert.equal(pod.automountServiceAccountToken, false);
        const sa = find(objects, 'ServiceAccount');
        assert.equal(pod.serviceAccountName, sa.metadata.name);
        assert.equal((sa as unknown as { automountServiceAccountToken?: boolean }).automountServiceAccountToken, false);
      });

      it('the PodDisruptionBudget and NetworkPolicy select the pod; gRPC and metrics are the only ways in, nothing goes out', () => {
        const pdb = find(objects, 'PodDisruptionBudget').spec as { selector: { matchLabels: Record<string, string> } };
        assert.ok(selects(pdb.selector.matchLabels, spec.template.metadata.labels));
        const np = find(objects, 'NetworkPolicy').spec as {
          podSelector: { matchLabels: Record<string, string> };
          policyTypes: string[];
          ingress: { ports: Port[]; from: Record<string, unknown>[] }[];
          egress?: unknown[];
        };
        assert.ok(selects(np.podSelector.matchLabels, spec.template.metadata.labels));
        assert.deepEqual([...np.policyTypes].sort(), ['Egress', 'Ingress']);
        assert.deepEqual(np.egress ?? [], [], 'no egress at all');
        const admitted = np.ingress.flatMap((rule) => rule.ports.map((p) => containerPort(p.port)?.name));
        assert.deepEqual(admitted.sort(), ['grpc', 'metrics']);
        const metricsRule = np.ingress.find((rule) => rule.ports.some((p) => containerPort(p.port)?.name === 'metrics'));
        assert.ok(metricsRule?.from.every((f) => f.namespaceSelector && Object.keys(f.namespaceSelector).length > 0), 'metrics only from a selected namespace');
        const grpcRule = np.ingress.find((rule) => rule.ports.some((p) => containerPort(p.port)?.name === 'grpc'));
        assert.deepEqual(grpcRule?.from, [{ namespaceSelector: { matchLabels: { 'isogear.io/client': 'true' } } }], 'gRPC only from namespaces labelled as clients');
      });

      it('every credential file a setting names is in a read-only mount of a Secret volume that exists', () => {
        const files = [config.apiKeysFile, config.tlsCertFile, config.tlsKeyFile, config.tlsClientCaFile].filter(Boolean);
        if (overlay === 'production') {
          assert.ok(config.apiKeysFile && config.tlsCertFile && config.tlsKeyFile, 'production never runs open or in plaintext');
        }
        assert.ok(config.apiKeysFile, `${overlay} requires API keys`);
        const generated = new Set(objects.filter((o) => o.kind === 'Secret').map((o) => o.metadata.name));
        for (const file of files) {
          const mount = container.volumeMounts?.find((m) => file.startsWith(`${m.mountPath}/`));
          assert.ok(mount, `${file} is under a volume mount`);
          assert.equal(mount.readOnly, true, `${mount.mountPath} is read-only`);
          const volume = (pod.volumes ?? []).find((v) => v.name === mount.name) as { secret?: { secretName: string; optional?: boolean } } | undefined;
          assert.ok(volume?.secret, `${mount.mountPath} is a Secret volume`);
          assert.notEqual(volume.secret.optional, true, 'the pod does not start without its credentials');
          if (overlay === 'dev') assert.ok(generated.has(volume.secret.secretName), 'the dev Secret is generated by the overlay');
        }
      });
    });
  }

  it('the validator catches what it must: unknown fields, wrong types, missing CRD fields and unknown kinds', () => {
    const objects = renderOverlay('dev');
    const dep = structuredClone(find(objects, 'Deployment'));
    const c = (dep.spec as DeploymentSpec).template.spec.containers[0] as unknown as Record<string, unknown>;
    c.readinesProbe = c.readinessProbe;
    c.ports = 'grpc';
    const problems = validateObject(dep);
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0], /containers\/0\/ports must be array/);
    delete c.ports;
    c.ports = (find(objects, 'Deployment').spec as DeploymentSpec).template.spec.containers[0].ports;
    assert.deepEqual(validateObject(dep), ['apps/v1/Deployment isogear: unknown field .spec.template.spec.containers[0].readinesProbe']);

    const sm = structuredClone(find(objects, 'ServiceMonitor'));
    delete (sm.spec as Record<string, unknown>).endpoints;
    assert.match(validateObject(sm).join('\n'), /required property 'endpoints'|required property endpoints/);

    const rule = structuredClone(find(objects, 'PrometheusRule'));
    delete ((rule.spec as { groups: { rules: Record<string, unknown>[] }[] }).groups[0].rules[0] as Record<string, unknown>).expr;
    assert.match(validateObject(rule).join('\n'), /expr/);

    assert.match(validateObject({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' } }).join(''), /no schema/);
  });
});
