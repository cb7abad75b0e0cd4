import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { HorizontalPodAutoscaler } from 'kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { PersistentVolumeClaim } from 'kubernetes-models/v1/PersistentVolumeClaim';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { parseAllDocuments } from 'yaml';

export const ROOT = path.join(__dirname, '..', '..');
export const OVERLAYS = ['dev', 'production', 'scale-out'] as const;
export type Overlay = (typeof OVERLAYS)[number];

/** A rendered Kubernetes object; fields are read through the typed views below. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

/** `kubectl kustomize` is required: the CI machine has it; a fresh laptop may not. */
export function kubectlAvailable(): boolean {
  try {
    execFileSync('kubectl', ['version', '--client'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Renders a kustomization directory (relative to the repository root) exactly as an operator would. */
export function kustomize(dir: string): K8sObject[] {
  const out = execFileSync('kubectl', ['kustomize', path.join(ROOT, dir)], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return parseAllDocuments(out).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`kustomize output of ${dir} is not YAML: ${doc.errors[0].message}`);
    return doc.toJS() as K8sObject;
  });
}

export const renderOverlay = (overlay: Overlay): K8sObject[] => kustomize(`deploy/k8s/overlays/${overlay}`);

interface Model {
  validate(): void;
}
type ModelClass = new (data: never) => Model;

/** The schema for each kind the manifests may contain; anything else fails validation. */
const MODELS: Record<string, ModelClass> = {
  'v1/Namespace': Namespace as unknown as ModelClass,
  'v1/ServiceAccount': ServiceAccount as unknown as ModelClass,
  'v1/ConfigMap': ConfigMap as unknown as ModelClass,
  'v1/Secret': Secret as unknown as ModelClass,
  'v1/Service': Service as unknown as ModelClass,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim as unknown as ModelClass,
  'apps/v1/Deployment': Deployment as unknown as ModelClass,
  'autoscaling/v2/HorizontalPodAutoscaler': HorizontalPodAutoscaler as unknown as ModelClass,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget as unknown as ModelClass,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy as unknown as ModelClass,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor as unknown as ModelClass,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule as unknown as ModelClass,
};

function schemaErrors(model: ModelClass, obj: unknown): string | undefined {
  try {
    new model(obj as never).validate();
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

const NOT_A_VALUE = Symbol('not a value');

/**
 * Validates one object against its Kubernetes (or Prometheus Operator CRD) schema, strictly:
 * the kubernetes-models validators check types, formats and required fields but, like a
 * lenient API server, ignore fields they do not know. A misspelt field (`readinesProbe`) would
 * then pass and silently do nothing, so every field is also probed: it is replaced by a value
 * no schema accepts, and if the object still validates, the schema does not know the field.
 * Returns the problems found (empty when valid).
 */
export function validateObject(input: K8sObject): string[] {
  const key = `${input.apiVersion}/${input.kind}`;
  let obj = input;
  const secretData = key === 'v1/Secret' ? (input as unknown as { data?: Record<string, string> }).data : undefined;
  if (secretData) {
    // kustomize folds base64 at 70 columns; the API server's decoder (Go's base64) skips the
    // line breaks, the schema's "byte" format does not.
    const data = Object.fromEntries(Object.entries(secretData).map(([k, v]) => [k, v.replace(/[\r\n]/g, '')]));
    obj = { ...input, data } as K8sObject;
  }
  const model = MODELS[key];
  if (!model) return [`${key} ${obj.metadata?.name}: no schema for this kind`];
  const base = schemaErrors(model, obj);
  if (base) return [`${key} ${obj.metadata?.name}: ${base}`];
  const problems: string[] = [];
  const visit = (node: unknown, at: string): void => {
    if (Array.isArray(node)) {
      node.forEach((item, i) => visit(item, `${at}[${i}]`));
      return;
    }
    if (node === null || typeof node !== 'object') return;
    const record = node as Record<string, unknown>;
    for (const field of Object.keys(record)) {
      const saved = record[field];
      record[field] = NOT_A_VALUE;
      const known = schemaErrors(model, obj) !== undefined;
      record[field] = saved;
      if (!known) problems.push(`${key} ${obj.metadata?.name}: unknown field ${at}.${field}`);
      else visit(saved, `${at}.${field}`);
    }
  };
  visit(obj, '');
  return problems;
}

export function find(objects: K8sObject[], kind: string, name?: string): K8sObject {
  const hits = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name || o.metadata.name.startsWith(`${name}-`)));
  if (hits.length !== 1) throw new Error(`expected one ${kind}${name ? ` named ${name}` : ''}, found ${hits.length}`);
  return hits[0];
}

/** Where one environment variable of a container comes from, as the kubelet resolves it. */
export type EnvSource = { value: string; from: string } | { secret: string; key: string; optional: boolean };

interface EnvContainer {
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string; optional?: boolean }; [source: string]: unknown } }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: unknown; prefix?: string }[];
}

/**
 * A container's environment from the rendered objects: the ConfigMaps of `envFrom` in order, then
 * `env`, which overrides them (the kubelet's precedence). A ConfigMap the render lacks, an
 * `envFrom` Secret or a `valueFrom` other than secretKeyRef throws: the checks would not see it.
 */
export function containerEnv(objects: K8sObject[], container: EnvContainer): Map<string, EnvSource> {
  const env = new Map<string, EnvSource>();
  for (const from of container.envFrom ?? []) {
    const name = from.configMapRef?.name;
    if (!name || from.secretRef || from.prefix) throw new Error(`envFrom ${JSON.stringify(from)}: only whole ConfigMaps are modelled`);
    const cm = objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === name);
    if (!cm) throw new Error(`envFrom names ConfigMap ${name}, which the render lacks`);
    for (const [k, v] of Object.entries((cm.data ?? {}) as Record<string, string>)) env.set(k, { value: v, from: `ConfigMap ${name}` });
  }
  for (const e of container.env ?? []) {
    // $(NAME) takes the value of a variable defined before it, as the kubelet expands it
    const expand = (v: string): string => v.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => {
      const earlier = env.get(name);
      return earlier && 'value' in earlier ? earlier.value : whole;
    });
    if (e.valueFrom === undefined) env.set(e.name, { value: expand(e.value ?? ''), from: 'env' });
    else if (e.valueFrom.fieldRef && Object.keys(e.valueFrom).length === 1) {
      // the downward API: a stand-in for what the kubelet fills in
      env.set(e.name, { value: `stand-in-${(e.valueFrom.fieldRef as { fieldPath: string }).fieldPath}`, from: 'downward API' });
    }
    else if (e.valueFrom.secretKeyRef && Object.keys(e.valueFrom).length === 1) {
      const ref = e.valueFrom.secretKeyRef;
      env.set(e.name, { secret: ref.name, key: ref.key, optional: ref.optional === true });
    } else throw new Error(`env ${e.name}: only secretKeyRef is modelled`);
  }
  return env;
}

/** A PodDisruptionBudget's spec (the integer or percentage forms). */
export interface DisruptionBudget {
  minAvailable?: number | string;
  maxUnavailable?: number | string;
}

/**
 * How many of `pods` healthy pods an eviction API call may take down at once under the budget,
 * as the disruption controller computes it (percentages round up).
 */
export function allowedDisruptions(budget: DisruptionBudget, pods: number): number {
  const count = (v: number | string): number => (typeof v === 'number' ? v : Math.ceil((Number(v.replace(/%$/, '')) / 100) * pods));
  if (budget.maxUnavailable !== undefined) return Math.max(0, Math.min(pods, count(budget.maxUnavailable)));
  if (budget.minAvailable !== undefined) return Math.max(0, pods - count(budget.minAvailable));
  return pods;
}

/** Does `selector` (matchLabels) select an object carrying `labels`? */
export function selects(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** Parses a Kubernetes quantity (`3Gi`, `512Mi`, `250m`, `2`) into bytes or cores. */
export function quantity(q: string | number): number {
  if (typeof q === 'number') return q;
  const m = /^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q);
  if (!m) throw new Error(`not a quantity: ${q}`);
  const n = Number(m[1]);
  const unit: Record<string, number> = { m: 1e-3, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };
  return m[2] ? n * unit[m[2]] : n;
}

export const readText = (file: string): string => readFileSync(path.join(ROOT, file), 'utf8');
