#!/usr/bin/env node
// Validate .glb/.gltf files with the Khronos glTF validator (npm `gltf-validator`).
//
// Usage: node tools/validate_gltf.mjs FILE [FILE ...]
//
// Prints one JSON document on stdout: the validator's report for a single file, an array of reports
// for several. A one-line summary per file goes to stderr. Exit status: 0 when no file has errors,
// 1 when any report has issues.numErrors > 0, 2 on bad usage or an unreadable/undetectable file.
// External resources (.gltf with separate files) are resolved next to the validated file.
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

async function validate(file) {
  const bytes = new Uint8Array(await readFile(file));
  return validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 0, // report every issue
    writeTimestamp: false, // same file -> same report
    externalResourceFunction: async (uri) =>
      new Uint8Array(await readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))),
  });
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node tools/validate_gltf.mjs FILE [FILE ...]");
    return 2;
  }
  const reports = [];
  for (const file of files) {
    let report;
    try {
      report = await validate(file);
    } catch (error) {
      console.error(`${file}: validation could not run: ${error}`);
      return 2;
    }
    const { numErrors, numWarnings, numInfos, numHints } = report.issues;
    console.error(
      `${file}: ${numErrors} errors, ${numWarnings} warnings, ${numInfos} infos, ${numHints} hints`,
    );
    reports.push(report);
  }
  console.log(JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2));
  return reports.some((r) => r.issues.numErrors > 0) ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
