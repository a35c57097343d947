// Compares iotsupport's JSON responses with what the UI was generated against: the OpenAPI
// document in the UI's repository (`openapi-cache/openapi.json`, the Python service's API),
// from which the UI's TypeScript client and types are generated. Read at run time from the
// fetched UI source; nothing of it is copied here.
//
// Only what can break the UI is a problem: a required field missing, or a value of the wrong
// type (including a date-time that does not parse). Fields we send that the UI does not know are
// listed as "extra" for information.

import fs from 'node:fs';

/** Fields of the Python service that iotsupport deliberately does not model (SPEC, README). */
export const UNMODELLED = new Map([]);

/** Endpoints of the Python service that SPEC does not include, with the reason. */
export const EXCLUDED_ENDPOINTS = [
  [/^\/api\/devices\/\d+\/keycloak-(status|sync)$/, 'Keycloak client management is not part of SPEC'],
  [/^\/api\/(images|cas|tasks|testing)\//, 'not part of SPEC'],
];

export function excludedReason(pathname) {
  for (const [re, why] of EXCLUDED_ENDPOINTS) if (re.test(pathname)) return why;
  return null;
}

export function loadOpenApi(file) {
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  const routes = [];
  for (const [template, ops] of Object.entries(doc.paths ?? {})) {
    const re = new RegExp('^' + template.replace(/\{[^}]+\}/g, '[^/]+') + '$');
    routes.push({ template, re, ops });
  }
  return { doc, routes };
}

function resolve(doc, schema) {
  while (schema && schema.$ref) {
    const parts = schema.$ref.replace(/^#\//, '').split('/');
    schema = parts.reduce((node, p) => node?.[p.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
  }
  return schema ?? {};
}

function typeOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (Number.isInteger(v)) return 'integer';
  return typeof v;
}

function matchesType(t, v) {
  const actual = typeOf(v);
  if (t === 'number') return actual === 'integer' || actual === 'number';
  return t === actual;
}

function validate(doc, schemaIn, value, at, out) {
  const schema = resolve(doc, schemaIn);
  if (schema.anyOf || schema.oneOf) {
    const alts = schema.anyOf ?? schema.oneOf;
    for (const alt of alts) {
      const trial = { problems: [], extra: [] };
      validate(doc, alt, value, at, trial);
      if (trial.problems.length === 0) {
        out.extra.push(...trial.extra);
        return;
      }
    }
    const names = alts.map((a) => resolve(doc, a).type ?? '?').join(' | ');
    out.problems.push(`${at}: ${typeOf(value)} ${JSON.stringify(value)?.slice(0, 60)} is none of ${names}`);
    return;
  }
  if (schema.type && !matchesType(schema.type, value)) {
    out.problems.push(`${at}: expected ${schema.type}, got ${typeOf(value)} ${JSON.stringify(value)?.slice(0, 60)}`);
    return;
  }
  if (schema.format === 'date-time' && typeof value === 'string' && Number.isNaN(Date.parse(value))) {
    out.problems.push(`${at}: "${value}" is not a date-time`);
  }
  if (Array.isArray(value) && schema.items) {
    value.forEach((item, i) => validate(doc, schema.items, item, `${at}[${i}]`, out));
  }
  if (typeOf(value) === 'object' && schema.properties) {
    for (const name of schema.required ?? []) {
      if (!(name in value)) {
        const why = UNMODELLED.get(name);
        if (why) out.unmodelled.push(`${at}.${name} (${why})`);
        else out.problems.push(`${at}.${name}: required by the UI's types, missing`);
      }
    }
    for (const [name, v] of Object.entries(value)) {
      if (schema.properties[name]) validate(doc, schema.properties[name], v, `${at}.${name}`, out);
      else if (schema.additionalProperties === undefined || schema.additionalProperties === false) {
        out.extra.push(`${at}.${name}`);
      }
    }
  }
}

/**
 * Checks one response. Returns `{template, problems, extra, unmodelled, note}`; `template` is
 * null when the UI's API has no such path (then nothing is compared).
 */
export function checkResponse(api, method, pathname, status, body) {
  const route = api.routes.find((r) => r.re.test(pathname));
  const result = { template: route?.template ?? null, problems: [], extra: [], unmodelled: [], note: '' };
  if (!route) {
    result.note = "not in the UI's API";
    return result;
  }
  const op = route.ops[method.toLowerCase()];
  const response = op?.responses?.[String(status)];
  const schema = response?.content?.['application/json']?.schema;
  if (!schema) {
    result.note = response ? 'no JSON body declared' : `status ${status} not declared for this operation`;
    return result;
  }
  if (body === undefined) {
    result.problems.push('expected a JSON body');
    return result;
  }
  const out = { problems: [], extra: [], unmodelled: [] };
  validate(api.doc, schema, body, '$', out);
  Object.assign(result, out);
  return result;
}
