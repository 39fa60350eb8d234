import sys,collections,statistics
d=collections.defaultdict(lambda: collections.defaultdict(list)); loads=[]
for l in open(sys.argv[1]):
    f=l.split()
    if f[0]=='load': loads.append(float(f[1])); continue
    if f[0]!='sample': print(l.strip()); continue
    kv=dict(x.split('=') for x in f[1:])
    key=(kv.pop('v'),kv.pop('size'))
    for k,v in kv.items(): d[key][k].append(float(v))
def pct(v,p):
    v=sorted(v); return v[round((len(v)-1)*p)]
print("load min/median/max %.2f/%.2f/%.2f"%(min(loads),statistics.median(loads),max(loads)))
cols=['pause','save-state','send-state','restore','commit','resume','prepare','stop-vcpus']
print("%-8s %5s %3s "%('v','size','n')+" ".join("%10s"%c for c in cols)+"   pause p90/max")
for key in sorted(d):
    m=d[key]
    print("%-8s %5s %3d "%(key[0],key[1],len(m['pause']))+" ".join("%10.3f"%(statistics.median(m[c]) if m[c] else float('nan')) for c in cols)+"   %.3f/%.3f"%(pct(m['pause'],.9),max(m['pause'])))
