import json,sys,statistics
pool={}
for d in sys.argv[1:]:
    for r in json.load(open(d+'/results.json'))['rows']:
        if r.get('scenario')!='restart' and 'restart' != r.get('name',r.get('scenario')): continue
        k=r.get('vcpus'); pool.setdefault(k,[]).extend(r['pause-samples-ms'])
xs=sorted(pool); med={k:statistics.median(pool[k]) for k in xs}
for k in xs: print(k, len(pool[k]), '%.3f'%med[k])
mx=sum(xs)/len(xs); my=sum(med.values())/len(xs)
print('endpoints slope %.3f'%((med[xs[-1]]-med[xs[0]])/(xs[-1]-xs[0])))
print('least-squares slope %.3f'%(sum((x-mx)*(med[x]-my) for x in xs)/sum((x-mx)**2 for x in xs)))
