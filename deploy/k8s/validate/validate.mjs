// Validates every CloudNativePG and Prometheus Operator resource in the YAML files given
// against the operators' APIs (@kubernetes-models/cloudnative-pg and prometheus-operator,
// generated from the operators' Go types): the JSON schemas for types, enums and required
// fields, and the models' declarations for field names, since those schemas allow unknown
// ones (a misspelt field would otherwise be dropped by the API server without a word). One
// line per resource; exits 1 if any fails.
//
//   node deploy/k8s/validate/validate.mjs deploy/k8s/*.yaml
import { readdirSync, readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import * as cnpg from "@kubernetes-models/cloudnative-pg/postgresql.cnpg.io/v1";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

/// Each API group's models, and the prefix of its types' qualified names.
const GROUPS = {
  "postgresql.cnpg.io/v1": { models: cnpg, prefix: "IComGithubCloudnativePgCloudnativePgApiV1" },
  "monitoring.coreos.com/v1": {
    models: monitoring,
    prefix: "IComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1",
  },
};
const shapes = declaredShapes();
let failed = false;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    const resource = doc.toJS();
    const group = resource && GROUPS[resource.apiVersion];
    if (!group) continue;
    const name = `${resource.kind}/${resource.metadata?.name}`;
    const Model = group.models[resource.kind];
    if (!Model) {
      console.log(`ERROR ${file}: ${name}: no kind ${resource.kind} in ${resource.apiVersion}`);
      failed = true;
      continue;
    }
    const problems = [];
    try {
      new Model(resource).validate();
    } catch (e) {
      problems.push(e.message);
    }
    const type = `${group.prefix}${resource.kind}`;
    problems.push(...unknownFields(resource, type, "").map((f) => `unknown field ${f}`));
    checked += 1;
    failed ||= problems.length > 0;
    console.log(
      problems.length
        ? `ERROR ${file}: ${name}: ${problems.join("; ")}`
        : `INFO ${file}: ${name} passed against ${resource.apiVersion}`,
    );
  }
}
if (checked === 0) {
  console.log(`ERROR no operator's resource in ${process.argv.slice(2).join(" ")}`);
  failed = true;
}
process.exit(failed ? 1 : 0);

/// The fields of `value` (at `path`) that its declared type does not name. A value whose type
/// is not a declared interface (a map, a primitive, a type this reader does not parse) is
/// not looked into.
function unknownFields(value, type, path) {
  if (Array.isArray(value)) {
    const item = type && /^Array<(\w+)>$/.exec(type);
    return value.flatMap((v, i) => unknownFields(v, item && item[1], `${path}${i}.`));
  }
  const shape = type && shapes.get(type);
  if (!shape || !value || typeof value !== "object") return [];
  return Object.entries(value).flatMap(([key, v]) =>
    shape.has(key) ? unknownFields(v, shape.get(key), `${path}${key}.`) : [`${path}${key}`],
  );
}

/// Every interface the models declare, by its fully qualified name: the `"field"?: Type`
/// lines of `export interface ILocal extends …` (a field whose type opens a `{` is a map),
/// named by `export type { ILocal as IQualified }`, with the fields of what it extends.
function declaredShapes() {
  const shapes = new Map();
  const parents = new Map();
  const dirs = [
    "@kubernetes-models/cloudnative-pg",
    "@kubernetes-models/prometheus-operator",
    "@kubernetes-models/apimachinery",
    "kubernetes-models",
  ];
  for (const dir of dirs) {
    for (const file of declarations(new URL(`./node_modules/${dir}/`, import.meta.url))) {
      const text = readFileSync(file, "utf8");
      const local = new Map();
      for (const m of text.matchAll(/export interface (\w+)(?: extends ([\w, ]+))? \{([\s\S]*?)\n\}/g)) {
        const fields = new Map();
        for (const f of m[3].matchAll(/^ {4}"([^"]+)"\??: (.*)$/gm)) {
          fields.set(f[1], f[2].replace(/;$/, "").trim());
        }
        local.set(m[1], { fields, extends: (m[2] ?? "").split(",").map((e) => e.trim()).filter(Boolean) });
      }
      for (const m of text.matchAll(/export type \{ ([^}]+) \}/g)) {
        for (const pair of m[1].split(",")) {
          const [from, to] = pair.trim().split(/\s+as\s+/);
          if (!to || !local.has(from)) continue;
          shapes.set(to, local.get(from).fields);
          parents.set(to, local.get(from).extends);
        }
      }
    }
  }
  for (const [name, fields] of shapes) {
    for (const parent of parents.get(name)) {
      if (parent === "TypeMeta") {
        fields.set("apiVersion", "string");
        fields.set("kind", "string");
      }
      for (const [k, v] of shapes.get(parent) ?? []) fields.set(k, v);
    }
  }
  return shapes;
}

function* declarations(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory() && entry.name !== "node_modules") {
      yield* declarations(new URL(`${entry.name}/`, dir));
    } else if (entry.name.endsWith(".d.ts")) {
      yield new URL(entry.name, dir);
    }
  }
}
