import json, sys, os, hashlib, struct, glob
a, b = sys.argv[1], sys.argv[2]
TIMING = {"images_per_s", "seconds", "step", "epochs", "delta_bar_start"}
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
def st_body(p):
    d = open(p, 'rb').read()
    n = struct.unpack('<Q', d[:8])[0]
    h = json.loads(d[8:8+n])
    meta = h.pop('__metadata__', {})
    state = json.loads(meta.get('state', 'null')) if 'state' in meta else None
    if state:
        state.get('extra', {}).get('position', {}).pop('seconds', None)
    return hashlib.sha256(json.dumps(h, sort_keys=True).encode() + d[8+n:]).hexdigest(), state
ok = True
for fa in sorted(glob.glob(os.path.join(a, '**', '*'), recursive=True)):
    rel = os.path.relpath(fa, a)
    fb = os.path.join(b, rel)
    if os.path.isdir(fa) or rel.endswith(('.png', '.md', '.err', '.log')) or rel == 'DONE':
        continue
    if not os.path.exists(fb):
        print('MISSING in new:', rel); ok = False; continue
    if rel.endswith('.jsonl'):
        la = [strip(json.loads(l)) for l in open(fa) if l.strip().startswith('{')]
        lb = [strip(json.loads(l)) for l in open(fb) if l.strip().startswith('{')]
        for x in la + lb:
            x.pop('dir', None); x.pop('model', None); x.pop('file', None)
        if la != lb:
            print('DIFF', rel); ok = False
            for x, y in zip(la, lb):
                if x != y: print('  old', json.dumps(x)[:400]); print('  new', json.dumps(y)[:400]); break
    elif rel.endswith('.safetensors'):
        ha, sa = st_body(fa); hb, sb = st_body(fb)
        if ha != hb or sa != sb:
            print('DIFF', rel, ha[:12], hb[:12], 'state equal' if sa == sb else 'state differs'); ok = False
    elif rel.endswith(('.csv',)):
        pass
    else:
        if open(fa,'rb').read() != open(fb,'rb').read():
            print('DIFF bytes', rel); ok = False
print('ALL EQUAL' if ok else 'DIFFERENCES')
