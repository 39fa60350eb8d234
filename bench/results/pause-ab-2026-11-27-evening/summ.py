import sys,collections,statistics
d=collections.defaultdict(lambda: collections.defaultdict(list)); loads=[]
for l in open(sys.argv[1]):
    f=l.split()
    if f[0]=='load': loads.append(float(f[1])); continue
    kv=dict(x.split('=') for x in f[1:])
    key=(kv.pop('v'),int(kv.pop('smp')))
    for k,v in kv.items(): d[key][k].append(float(v))
def pct(v,p):
    v=sorted(v); return v[round((len(v)-1)*p)]
print("load min/median/max %.2f/%.2f/%.2f"%(min(loads),statistics.median(loads),max(loads)))
cols=['pause','write-image','until-exec','exec','machine','until-load','restore','resume']
print("%-8s %3s %3s "%('v','smp','n')+" ".join("%11s"%c for c in cols)+"   pause p90/max")
for key in sorted(d):
    m=d[key]
    print("%-8s %3d %3d "%(key[0],key[1],len(m['pause']))+" ".join("%11.3f"%statistics.median(m[c]) for c in cols)+"   %.3f/%.3f"%(pct(m['pause'],.9),max(m['pause'])))
vs=sorted(set(k[0] for k in d)); smps=sorted(set(k[1] for k in d))
if len(smps)>1:
  for v in vs:
    a,b=smps[0],smps[-1]
    per={c:(statistics.median(d[(v,b)][c])-statistics.median(d[(v,a)][c]))/(b-a) for c in cols}
    print("per-vCPU %s (%d->%d): "%(v,a,b)+" ".join("%s %.3f"%(c,per[c]) for c in cols))
