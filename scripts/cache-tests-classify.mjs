// Counts cache-tests results the way the suite's own pages classify them
// (lib/display.mjs determineTestResult, restated here because that file
// imports browser-only modules): kind required -> pass/fail, optimal ->
// pass/optional_fail, check -> yes/no, a failed dependency -> dependency_fail.
//   node scripts/cache-tests-classify.mjs SUITE_DIR RESULTS.json [MORE.json ...]
//   LIST=fail,setup_fail node ...   also lists those tests of the first file
const [suiteDir, ...files] = process.argv.slice(2)
const { default: suites } = await import(suiteDir + '/tests/index.mjs')
const tests = new Map()
for (const s of suites) for (const t of s.tests) tests.set(t.id, t)
const { readFileSync } = await import('node:fs')
function classify (results, id, seen = new Set()) {
  const t = tests.get(id); const r = results[id]
  if (r === undefined) return 'untested'
  if (t.depends_on && !seen.has(id)) {
    seen.add(id)
    for (const d of t.depends_on) if (!['pass', 'yes'].includes(classify(results, d, seen))) return 'dependency_fail'
  }
  if (Array.isArray(r) && r[0] === 'Setup') return r[1] === 'retry' ? 'retry' : 'setup_fail'
  if (r === false && r[0] !== 'Assertion') return 'harness_fail'
  const kind = t.kind || 'required'
  if (kind === 'required') return r === true ? 'pass' : 'fail'
  if (kind === 'optimal') return r === true ? 'pass' : 'optional_fail'
  return r === true ? 'yes' : 'no'
}
for (const f of files) {
  const results = JSON.parse(readFileSync(f))
  const count = {}
  for (const id of tests.keys()) { const c = classify(results, id); count[c] = (count[c] || 0) + 1 }
  console.log(f.split('/').pop().replace('.json', ''), JSON.stringify(count))
}
if (process.env.LIST) {
  const results = JSON.parse(readFileSync(files[0]))
  for (const id of tests.keys()) { const c = classify(results, id); if (process.env.LIST.split(',').includes(c)) console.log(c, id, JSON.stringify(results[id]).slice(0, 120)) }
}
